"""An image run's report and model card: the retrieval and probe figures (trained, untrained, chance) in both report
renderings and in the card's model-index, the page still self-contained with its example images inline, and the
data facts counted in samples."""

from __future__ import annotations

import base64
import copy
import io
import re
import xml.etree.ElementTree as ET

import pytest
import yaml
from PIL import Image

from pretrain.config import resolve, validate
from pretrain.model.card import render_card
from pretrain.report import render_html, render_markdown

NS = {"s": "http://www.w3.org/2000/svg"}


def png_uri(rgb: tuple[int, int, int]) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), rgb).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def image_report(modality: str = "image_text") -> dict:
    retrieval = None
    if modality == "image_text":
        retrieval = {"pool": 100, "pools": 3, "samples": 300, "distinct_captions": 310,
                     "chance": {"recall_at_1": 0.01, "recall_at_5": 0.05},
                     "trained": {"i2t_recall_at_1": 0.25, "i2t_recall_at_5": 0.625, "t2i_recall_at_1": 0.2,
                                 "t2i_recall_at_5": 0.5},
                     "untrained": {"i2t_recall_at_1": 0.0125, "i2t_recall_at_5": 0.05, "t2i_recall_at_1": 0.01,
                                   "t2i_recall_at_5": 0.06}}
    examples = [{"image": png_uri((200, 30 * i, 0)), "caption": f"a red <b>circle</b> {i}",
                 "retrieved": f"a red circle {i if i % 2 else i + 1}", "hit": bool(i % 2)} for i in range(4)]
    return {
        "recipe": "clip-tiny", "modality": modality,
        "objective": "image_text_contrastive" if modality == "image_text" else "image_contrastive",
        "metrics": {}, "tasks": {}, "samples": [], "notes": [],
        "images": {"modality": modality, "model": "clip" if modality == "image_text" else "vit", "image_size": 32,
                   "val_samples": 320, "labels": ["circle", "square", "triangle"], "retrieval": retrieval,
                   "probe": {"classes": 3, "train_samples": 2700, "val_samples": 320, "chance": 0.375,
                             "trained": {"accuracy": 0.875, "knn_accuracy": 0.8125, "weight_decay": 0.01},
                             "untrained": {"accuracy": 0.5, "knn_accuracy": 0.4375, "weight_decay": 0.1}},
                   "examples": examples, "notes": []},
        "history": [{"step": s, "loss": 4.0 - s / 100, "lr": 1e-3, "samples_per_second": 900.0} for s in (10, 20, 30)],
        "train": {"steps": 30, "world_size": 2, "device": "cpu"},
        "data": {
            "sources": {"shapes": {"documents": 3000, "samples": 3000, "train_samples": 2700, "val_samples": 300,
                                   "licenses": {"CC0-1.0": 3000}}},
            "samples": {"train_samples": 2700, "val_samples": 300, "no_caption": 12, "labels": 3, "image_size": 32,
                        "modality": modality},
            "funnel": [{"stage": "read", "by_source": {"shapes": {"documents": 3100, "bytes": None}}},
                       {"stage": "in sample shards", "by_source": {"shapes": {"documents": 3000, "bytes": None}}}],
            "drops": {"image_too_small": {"documents": 40, "by_source": {"shapes": 40},
                                          "sample": {"source": "shapes", "id": "s1", "value": 12, "text": "tiny"}}},
            "dedup": {"config": {"exact": True, "fuzzy": True},
                      "by_source": {"shapes": {"documents_in": 3060, "exact": 50, "fuzzy": 10, "documents_out": 3000}}},
            "curation": {}, "dates": {},
        },
    }


def svgs(page: str) -> dict[str, ET.Element]:
    return {el.get("id"): el for el in (ET.fromstring(m) for m in re.findall(r"<svg .*?</svg>", page, re.S))}


def bar_widths(el: ET.Element) -> list[float]:
    return [float(r.get("width")) for r in el.findall("s:rect[@class='bar']", NS)]


# -- report ------------------------------------------------------------------------------------------------------
def test_the_image_report_shows_trained_untrained_and_chance_in_both_renderings():
    report = image_report()
    page, md = render_html(report), render_markdown(report)
    plots = svgs(page)
    assert {"plot-retrieval", "plot-probe", "plot-loss", "plot-throughput", "plot-funnel-documents"} <= set(plots)
    assert "plot-heldout" not in plots and "Held-out evaluation" not in page  # no token metrics for images
    widths = bar_widths(plots["plot-retrieval"])  # per row: trained, untrained, chance
    assert widths[3] / widths[0] == pytest.approx(0.625 / 0.25, rel=1e-3)  # i2t R@5 vs R@1, trained
    assert widths[0] / widths[2] == pytest.approx(0.25 / 0.01, rel=1e-2)  # a short bar: rounding
    probe = bar_widths(plots["plot-probe"])
    assert probe[0] / probe[2] == pytest.approx(0.875 / 0.375, rel=1e-3)
    assert "| image -> text | recall@1 | 25.0% | 1.2% | 1.0% | 25.00x |" in md
    assert "| text -> image | recall@5 | 50.0% | 6.0% | 5.0% | 10.00x |" in md
    assert "| linear probe | 87.5% | 50.0% | 37.5% | 2.33x |" in md
    assert "| k-NN | 81.2% | 43.8% | 37.5% | 2.17x |" in md
    assert "| shapes | 3,000 | 2,700 | 300 | CC0-1.0: 3,000 |" in md  # sources count samples
    assert "| left out: no caption | 12 |" in md and "| read | shapes | 3,100 |" in md
    assert "samples/s" in page and "Samples dropped per rule" in page
    for text in ("25.0%", "87.5%", "37.5%", "3 pool(s) of 100"):
        assert text in page and text in md
    blob = re.search(r'<script type="application/json" id="report">(.*?)</script>', page, re.S).group(1)
    assert '"i2t_recall_at_1": 0.25' in blob and "base64" not in blob  # numbers for scrapers, not pictures


def test_the_image_report_is_self_contained_with_inline_images_only():
    report = image_report()
    report["images"]["examples"].append({"image": "https://example.com/x.png", "caption": "remote", "hit": False})
    report["images"]["examples"].append({"image": 'data:image/png;base64,AAA" onerror="alert(1)', "caption": "bad"})
    page = render_html(report)
    sources = re.findall(r'\b(?:src|href|action)="([^"#][^"]*)"', page)
    assert len(sources) == 4 and all(re.fullmatch(r"data:image/png;base64,[A-Za-z0-9+/=]+", s) for s in sources)
    assert "example.com" not in page and "onerror" not in page and page.count("<img ") == 4
    assert re.findall(r"url\(|@import|<link|<iframe", page) == []
    assert page.count("<script") == 1  # the JSON block only
    assert "a red &lt;b&gt;circle&lt;/b&gt; 0" in page and "model&#x27;s pick (wrong)" in page
    md = render_markdown(report)
    assert "data:image" not in md and "_Images in the HTML report._" in md and "a red <b>circle</b> 0" in md


def test_an_image_only_report_has_the_probe_and_no_retrieval():
    report = image_report("image")
    page, md = render_html(report), render_markdown(report)
    assert "plot-retrieval" not in svgs(page) and "plot-probe" in svgs(page)
    assert "Zero-shot retrieval" not in md and "| linear probe | 87.5% |" in md
    assert "probe (wrong)" in page and "label: a red" in page


@pytest.mark.parametrize("part", ["retrieval", "probe", "examples", "images", "data", "history"])
def test_a_missing_image_part_says_not_available(part):
    report = copy.deepcopy(image_report())
    if part in ("images", "data", "history"):
        del report[part]
    else:
        report["images"][part] = None
    page, md = render_html(report), render_markdown(report)
    svgs(page)  # still well-formed
    assert "Not available" in page and "Not available" in md


def test_a_skipped_probe_says_why():
    report = image_report()
    report["images"]["probe"] = {"skipped": "no labelled samples in the train split"}
    md = render_markdown(report)
    assert "Not available: the linear probe (no labelled samples in the train split)." in md


# -- card --------------------------------------------------------------------------------------------------------
def front_matter(text: str) -> dict:
    return yaml.safe_load(re.match(r"---\n(.*?)\n---\n", text, re.S).group(1))


def section(text: str, title: str) -> str:
    return text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def recipe_for(tmp_path, objective: str):
    tree = {"name": "clip-tiny" if objective == "image_text_contrastive" else "simclr-tiny", "seed": 0,
            "run_root": str(tmp_path),
            "sources": [{"name": "shapes", "format": "images", "uri": "builtin:shapes", "license": "CC0-1.0"}],
            "images": {"size": 48}, "model": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "seq_len": 16,
                                              "image_size": 32, "patch_size": 4, "projection_dim": 16},
            "train": {"objective": objective, "nproc_per_node": 2, "micro_batch_size": 64}}
    return resolve(validate(tree))


def clip_config():
    from transformers import CLIPConfig

    return CLIPConfig(text_config={"vocab_size": 300, "hidden_size": 32, "intermediate_size": 64,
                                   "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 16},
                      vision_config={"image_size": 32, "patch_size": 4, "hidden_size": 32, "intermediate_size": 64,
                                     "num_hidden_layers": 1, "num_attention_heads": 2},
                      projection_dim=16, architectures=["CLIPModel"])


def test_the_clip_card_says_what_data_it_saw_and_has_the_results(tmp_path):
    recipe = recipe_for(tmp_path, "image_text_contrastive")
    report = image_report()
    text = render_card(recipe, clip_config(), parameters=123456, train=report["train"], history=report["history"],
                       data=report["data"], images=report["images"], lineage_info={})
    meta = front_matter(text)
    assert meta["pipeline_tag"] == "zero-shot-image-classification" and meta["license"] == "cc0-1.0"
    assert "image-text-contrastive" in meta["tags"]
    [entry] = meta["model-index"]
    found = {(r["task"]["name"], m["type"]): m["value"] for r in entry["results"] for m in r["metrics"]}
    assert found[("zero-shot retrieval, image -> text", "recall@1")] == 0.25
    assert found[("zero-shot retrieval, text -> image", "recall@5")] == 0.5
    assert found[("linear probe on frozen features", "accuracy")] == 0.875
    names = [m["name"] for r in entry["results"] for m in r["metrics"]]
    assert "recall@1 (pool 100; chance 0.01, untrained 0.0125)" in names
    data = section(text, "Data")
    assert "| shapes | 3,000 | 2,700 | 300 | CC0-1.0 (3,000) |" in data
    assert "shorter side is at most 48 pixels" in data and "12 samples without a caption" in data
    assert "| `image_too_small` | 40 | shapes 40 |" in data
    assert "| shapes | 3,060 | 50 | 10 | 3,000 |" in data and "at most 4 bits apart" in data
    evaluation = section(text, "Evaluation")
    assert "| image -> text | recall@1 | 0.25 | 0.0125 | 0.01 |" in evaluation
    assert "| linear probe | 0.875 | 0.5 | 0.375 |" in evaluation
    training = section(text, "Training")
    assert "symmetric InfoNCE" in training and "| global batch (samples) | 128 |" in training
    assert "| samples trained (steps x global batch) | 3,840 |" in training
    assert "CLIPModel.from_pretrained" in text and "## Limitations" in text

    hub = pytest.importorskip("huggingface_hub")
    card = hub.ModelCard(text)
    assert card.data.pipeline_tag == "zero-shot-image-classification"
    assert {(r.task_name, r.metric_type): r.metric_value for r in card.data.eval_results} == found


def test_the_vit_card_before_evaluation_says_so(tmp_path):
    from transformers import ViTConfig

    recipe = recipe_for(tmp_path, "image_contrastive")
    config = ViTConfig(image_size=32, patch_size=4, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=2, architectures=["ViTModel"])
    text = render_card(recipe, config, parameters=1000, lineage_info={})
    meta = front_matter(text)
    assert meta["pipeline_tag"] == "image-feature-extraction" and "model-index" not in meta
    assert "Not evaluated yet" in section(text, "Evaluation") and "Not recorded" in section(text, "Data")
    assert "NT-Xent" in section(text, "Training") and "temperature 0.1" in section(text, "Training")
    assert "last_hidden_state[:, 0]" in text and "projection head" in section(text, "Model")
