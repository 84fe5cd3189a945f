"""The model card: its YAML metadata and its numbers, checked against the inputs; huggingface_hub parses it."""

from __future__ import annotations

import re

import pytest
import yaml
from transformers import LlamaConfig, ModernBertConfig

from pretrain.config import load_recipe
from pretrain.model.card import lineage, render_card
from pretrain.model.flops import flops_per_token

DIGEST = "sha256:" + "ab" * 32


def front_matter(text: str) -> dict:
    match = re.match(r"---\n(.*?)\n---\n", text, re.S)
    assert match, "no YAML front matter"
    return yaml.safe_load(match.group(1))


def section(text: str, title: str) -> str:
    return text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def row(text: str, label: str) -> list[str]:
    """The cells of the table row that starts with ``label``."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == label:
            return cells[1:]
    raise AssertionError(f"no row {label!r}")


def data(licenses: dict[str, dict[str, int]] | None = None) -> dict:
    licenses = licenses or {"web": {"CC-BY-4.0": 90}, "code": {"CC-BY-4.0": 40}}
    return {
        "sources": {"web": {"documents": 90, "train_tokens": 70_000, "val_tokens": 4_000, "licenses": licenses["web"]},
                    "code": {"documents": 40, "train_tokens": 30_000, "val_tokens": 2_000,
                             "licenses": licenses["code"]}},
        "drops": {"toxic.max_fraction": {"documents": 3, "by_source": {"web": 3}, "sample": None},
                  "min_chars": {"documents": 5, "by_source": {"web": 2, "code": 3}, "sample": None}},
        "dedup": {"config": {"exact": True, "fuzzy": True, "threshold": 0.7, "shingle_size": 5, "bands": 20,
                             "rows": 10, "representative": "longest"},
                  "by_source": {"web": {"documents_in": 95, "exact": 2, "fuzzy": 3, "documents_out": 90}}},
        "filters": {"profiles": {"web": "web", "code": "code"}, "rules_missing": []},
        "mixture": None, "trained_tokens_by_source": {"web": 150_000, "code": 50_000},
        "curation": {"web": {"documents_in": 100, "toxic": 0.03, "low_quality": 0.02, "duplicate": 0.05,
                             "other_dropped": 0.0, "pii_redactions": {"email": 7, "phone": 2}}},
        "dates": {"knowledge_cutoff": "2024-03-31", "basis": "latest document date in the train split",
                  "by_source": {"web": {"dated": 80, "undated": 5, "invalid": 1, "earliest": "2019-01-02",
                                        "latest": "2024-03-31", "by_year": {"2019": 30, "2024": 50}},
                                "code": {"dated": 0, "undated": 38, "invalid": 0, "earliest": None, "latest": None,
                                         "by_year": {}}}},
    }


@pytest.fixture
def recipe(tmp_path):
    return load_recipe("tiny", [f"run_root={tmp_path}", "model.seq_len=64", "train.nproc_per_node=4"])


def llama() -> LlamaConfig:
    return LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, max_position_embeddings=64, architectures=["LlamaForCausalLM"])


HISTORY = [{"step": 10, "loss": 5.0, "step_seconds": 180.0}, {"step": 10, "val_loss": 4.9},
           {"step": 20, "loss": 4.0, "step_seconds": 360.0}]  # 10 x 180 s + 10 x 360 s = 1.5 h
TRAIN = {"steps": 20, "world_size": 4, "device": "cuda", "initial_val_loss": 6.9, "final_val_loss": 4.25}


def test_card_before_evaluation_states_compute_cutoff_and_curation(recipe):
    text = render_card(recipe, llama(), parameters=123_456, train=TRAIN, history=HISTORY, data=data())
    meta = front_matter(text)
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    assert meta["license"] == "cc-by-4.0" and "model-index" not in meta
    assert {"pretrain", "base-model"} <= set(meta["tags"])
    assert "Not evaluated yet" in section(text, "Evaluation")
    assert row(text, "parameters") == ["123,456"]
    assert row(text, "tokens trained") == ["200,000"]  # the loader's count per source, added up
    flops = flops_per_token(llama(), 64, "causal_lm") * 200_000
    assert row(text, "training FLOPs")[0].startswith(f"{flops:.3e} ")
    assert row(text, "wall-clock training time")[0].startswith("1.500 h")
    assert row(text, "GPU-hours")[0].startswith("6.000 ")  # 4 devices x 1.5 h
    cutoff = section(text, "Knowledge cutoff")
    assert "**Knowledge cutoff: 2024-03-31**" in cutoff and "43 of 123 training documents carry no date" in cutoff
    assert row(cutoff, "web")[:4] == ["80", "5 (1 unreadable)", "2019-01-02", "2024-03-31"]
    curation = section(text, "Data curation")
    assert row(curation, "web") == ["100", "3.00%", "2.00%", "5.00%", "0.00%", "90.00%", "email 7, phone 2"]
    assert "Known limitations and bias caveats" in curation
    assert row(section(text, "Data"), "`min_chars`") == ["5", "code 3, web 2"]
    assert row(section(text, "Data"), "web")[:4] == ["90", "70,000", "4,000", "CC-BY-4.0 (90)"]


def test_card_after_evaluation_has_the_results_in_model_index(recipe):
    metrics = {"overall": {"loss": 3.25, "perplexity": 25.79, "bits_per_byte": 1.1, "tokens": 4096},
               "by_source": {"web": {"loss": 3.0, "perplexity": 20.09, "bits_per_byte": 1.0, "tokens": 2048},
                             "code": {"loss": 3.5, "perplexity": 33.12, "bits_per_byte": None, "tokens": 2048}}}
    tasks = {"next_line": {"accuracy": 0.4125, "chance": 0.25, "items": 80, "metric": "acc",
                           "decontamination": {"ngram": 13, "checked": 90, "contaminated": 10, "removed": 10}}}
    text = render_card(recipe, llama(), parameters=10, train=TRAIN, data=data(), metrics=metrics, tasks=tasks)
    [entry] = front_matter(text)["model-index"]
    assert entry["name"] == recipe.name
    found = {(r["dataset"]["name"], m["type"]): m["value"] for r in entry["results"] for m in r["metrics"]}
    overall = f"{recipe.name} validation split (all sources)"
    assert found[(overall, "loss")] == 3.25 and found[(overall, "perplexity")] == 25.79
    assert found[(overall, "bits_per_byte")] == 1.1
    assert found[(f"{recipe.name} validation split: web", "bits_per_byte")] == 1.0
    assert (f"{recipe.name} validation split: code", "bits_per_byte") not in found  # None is left out, not null
    assert found[("next_line", "accuracy")] == 0.4125
    evaluation = section(text, "Evaluation")
    assert row(evaluation, "all sources") == ["4,096", "3.25", "25.79", "1.1"]
    assert row(evaluation, "next_line") == ["80", "0.4125", "0.25", "10 of 90 removed (13-grams)"]

    hub = pytest.importorskip("huggingface_hub")
    card = hub.ModelCard(text)
    assert card.data.license == "cc-by-4.0" and card.data.pipeline_tag == "text-generation"
    results = {(r.dataset_name, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert results == found


def test_masked_lm_card_and_licences_that_are_not_uniform_or_not_on_the_hub(recipe):
    masked = recipe.model_copy(update={"train": recipe.train.model_copy(update={"objective": "masked_lm"})})
    config = ModernBertConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=4)
    metrics = {"overall": {"loss": 2.5, "perplexity": 12.18, "bits_per_byte": None, "masked_accuracy": 0.375,
                           "tokens": 512}, "by_source": {}}
    mixed = data({"web": {"CC-BY-4.0": 90}, "code": {"MIT": 40}})
    text = render_card(masked, config, parameters=5, train=TRAIN, data=mixed, metrics=metrics)
    meta = front_matter(text)
    assert meta["pipeline_tag"] == "fill-mask" and "license" not in meta
    metric = {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert metric == {"loss": 2.5, "perplexity": 12.18, "accuracy": 0.375}
    assert "AutoModelForMaskedLM" in text
    psf = render_card(recipe, llama(), parameters=5, data=data({"web": {"PSF-2.0": 9}, "code": {"PSF-2.0": 4}}))
    assert front_matter(psf)["license"] == "other" and front_matter(psf)["license_name"] == "psf-2.0"
    undated = render_card(recipe, llama(), parameters=5, data=data({"web": {"PSF-2.0": 9}, "code": {"": 4}}))
    assert "license" not in front_matter(undated)  # documents without a licence: not uniform


def test_card_with_nothing_recorded_still_renders_and_says_so(recipe):
    text = render_card(recipe, llama(), parameters=7, lineage_info={})
    meta = front_matter(text)
    assert meta["pipeline_tag"] == "text-generation" and "model-index" not in meta and "license" not in meta
    assert row(text, "tokens trained") == ["-"] and row(text, "training FLOPs") == ["not recorded"]
    assert "Not recorded" in section(text, "Knowledge cutoff") and "Not recorded" in section(text, "Data curation")


def test_lineage_names_the_commit_and_the_cluster_image_digest(tmp_path):
    local = lineage(load_recipe("tiny", [f"run_root={tmp_path}"]))
    assert local["image"] is None and local["recipe"] == "recipe.json"
    assert local["code_version"].startswith(local["package_version"])
    if local["git_commit"]:
        assert re.fullmatch(r"[0-9a-f]{12}", local["git_commit"])
    cluster = load_recipe("tiny", ["run_root=s3://bucket/runs/x", "train.launcher=pytorchjob",
                                   f"cluster.train_image=registry.example/pretrain-cuda@{DIGEST}"])
    info = lineage(cluster)
    assert info["image"] == f"registry.example/pretrain-cuda@{DIGEST}" and info["image_digest"] == DIGEST
    text = render_card(cluster, llama(), parameters=1, lineage_info=info)
    assert row(section(text, "Lineage"), "image digest") == [f"`{DIGEST}`"]
