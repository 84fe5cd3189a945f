"""Evaluation of image runs: retrieval recall is exact for an oracle and zero for a model that cannot tell samples
apart, the real CLIP/ViT path gives chance-level numbers for an untrained model, the linear probe separates what
is separable and no more, and the evaluate step puts it all in its metrics, report and card."""

from __future__ import annotations

import io
import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from pretrain.config import RecipeError, resolve, validate
from pretrain.evaluate.contrastive import evaluate_encoders, evaluate_model, flat_metrics, load_images
from pretrain.evaluate.probe import knn_accuracy, linear_probe
from pretrain.evaluate.retrieval import recall_at, retrieval_pools
from pretrain.manifest import Manifest, Shard

EOS, PAD, FIRST = 0, 1, 3  # caption token ids: colour k is token FIRST + k
SCHEMA = pa.schema([("id", pa.string()), ("source", pa.string()), ("image", pa.binary()), ("text", pa.string()),
                    ("caption", pa.list_(pa.int32())), ("label", pa.int32())])
LABELS = ["cool", "neutral", "warm"]


def colour(k: int) -> tuple[int, int, int]:
    return (9 * k) % 256, (255 - 7 * k) % 256, (53 * k + 11) % 256


def patch(k: int, size: tuple[int, int] = (24, 16)) -> bytes:
    """A uniform patch of colour k, not square (the evaluation resizes and centre-crops it)."""
    buf = io.BytesIO()
    Image.new("RGB", size, colour(k)).save(buf, format="PNG")
    return buf.getvalue()


def rows(ks: list[int], captions: bool = True, encode=None) -> dict[str, list]:
    texts = [f"colour number {k}" if captions else "" for k in ks]
    ids = [(encode(t) if encode else [FIRST + k]) + [EOS] if captions else [] for k, t in zip(ks, texts, strict=True)]
    return {"id": [f"s{k}-{i}" for i, k in enumerate(ks)], "source": ["patches"] * len(ks),
            "image": [patch(k) for k in ks], "text": texts, "caption": ids, "label": [k % 3 for k in ks]}


def write_samples(root, train: list[int], val: list[int], modality: str = "image_text",
                  labels: list[str] | None = LABELS, encode=None) -> Manifest:
    """A samples manifest (contract section 2): one train and two validation shards; ``encode``: caption text ->
    token ids (default: colour k is the one token FIRST + k)."""
    shards = []
    parts = [("train", train), ("val", val[: len(val) // 2]), ("val", val[len(val) // 2:])]
    for n, (split, ks) in enumerate(parts):
        table = pa.Table.from_pydict(rows(ks, modality == "image_text", encode), schema=SCHEMA)
        url = str(root / f"{split}-{n}.parquet")
        pq.write_table(table, url, row_group_size=256, compression="zstd")
        shards.append(Shard(url=url, rows=len(ks), bytes=0, meta={"split": split, "source": "patches"}))
    return Manifest(kind="samples", root=str(root), fingerprint="f" * 16, shards=shards,
                    stats={"train_samples": len(train), "val_samples": len(val)},
                    extra={"modality": modality, "eos_id": EOS, "pad_id": PAD, "labels": list(labels or []),
                           "image_size": 16, "vocab_size": 300 if modality == "image_text" else 0})


def colour_of(pixel_values: torch.Tensor, n: int) -> torch.Tensor:
    """The palette index of each normalized image (its mean colour, nearest palette entry)."""
    rgb = (pixel_values.mean(dim=(2, 3)) * 0.5 + 0.5) * 255
    palette = torch.tensor([colour(k) for k in range(n)], dtype=torch.float32)
    return torch.cdist(rgb, palette).argmin(dim=1)


class Oracle:
    """Features that are a perfect function of the sample: a one-hot of its colour, from pixels or caption."""

    def __init__(self, n: int) -> None:
        self.n = n

    def images(self, pixel_values):
        return torch.nn.functional.one_hot(colour_of(pixel_values, self.n), self.n).float()

    def texts(self, input_ids, attention_mask):
        return torch.nn.functional.one_hot(input_ids[:, 0] - FIRST, self.n).float()


class Constant:
    """The same feature for every image and caption: it cannot tell anything apart."""

    def images(self, pixel_values):
        return torch.ones(len(pixel_values), 4)

    def texts(self, input_ids, attention_mask):
        return torch.ones(len(input_ids), 4)


# -- retrieval ---------------------------------------------------------------------------------------------------
def test_an_oracle_retrieves_perfectly_and_a_constant_model_never(tmp_path):
    n = 60
    samples = write_samples(tmp_path, train=list(range(n)) * 2, val=list(range(n)))
    result = evaluate_encoders({"trained": Oracle(n), "untrained": Constant()}, samples, image_size=16, pool=16,
                               probe=False, seed=3)
    r = result["retrieval"]
    assert r["pools"] == 3 and r["samples"] == 48 and r["chance"] == {"recall_at_1": 1 / 16, "recall_at_5": 5 / 16}
    assert r["trained"] == {"i2t_recall_at_1": 1.0, "i2t_recall_at_5": 1.0, "t2i_recall_at_1": 1.0,
                            "t2i_recall_at_5": 1.0}
    assert set(r["untrained"].values()) == {0.0}  # ties count against the query: no lucky tie-break
    assert len(result["examples"]) == 8 and all(e["hit"] and e["caption"] == e["retrieved"]
                                                for e in result["examples"])
    assert result["examples"][0]["image"].startswith("data:image/png;base64,")
    flat = flat_metrics(result)
    assert flat["retrieval_i2t_recall_at_1"] == 1.0 and flat["retrieval_recall_at_1_vs_chance"] == 16.0
    assert flat["untrained_retrieval_t2i_recall_at_5"] == 0.0 and flat["retrieval_recall_at_5_chance"] == 5 / 16
    assert flat["retrieval_recall_at_1_vs_untrained"] == 16.0  # untrained 0: floored at chance
    assert "probe_accuracy" not in flat and "Linear probe: off" in result["notes"][0]


def test_recall_counts_ties_against_the_query_and_at_5_is_at_least_at_1():
    sim = torch.tensor([[0.9, 0.1, 0.2], [0.5, 0.5, 0.1], [0.3, 0.8, 0.4]])
    assert recall_at(sim, 1) == pytest.approx(1 / 3)  # row 1 ties with a wrong candidate: a miss
    assert recall_at(sim, 2) == pytest.approx(1.0)
    assert recall_at(torch.full((3, 3), float("nan")), 2) == 0.0  # a NaN score is a miss
    g = torch.Generator().manual_seed(0)
    noisy = torch.randn(50, 50, generator=g) + 2 * torch.eye(50)
    assert recall_at(noisy, 5) >= recall_at(noisy, 1) > 0.0


def test_pools_have_distinct_captions_are_seeded_and_too_few_samples_name_the_keys():
    texts = ["a red dot", "A  red dot", "a blue dot", "", "a green dot", "a red dot", "a cyan dot"]
    pools = retrieval_pools(texts, 2, seed=1)
    assert len(pools) == 2 and all(len(p) == 2 for p in pools)
    keys = [" ".join(texts[i].lower().split()) for p in pools for i in p]
    assert len(set(keys)) == 4 and "" not in keys  # case and spacing ignored, empty captions left out
    assert pools == retrieval_pools(texts, 2, seed=1) and len({str(retrieval_pools(texts, 2, s)) for s in range(8)}) > 1
    with pytest.raises(RecipeError, match=r"evaluate\.retrieval_pool \(5\).*split\.val_fraction"):
        retrieval_pools(texts, 5, seed=1)


def test_rows_are_taken_from_the_row_groups_that_hold_them(tmp_path):
    from pretrain.evaluate.contrastive import labelled_groups, read_columns, take_rows

    shards = []
    for n in range(2):  # 2 shards of 5 row groups of 7 rows
        ks = list(range(35 * n, 35 * (n + 1)))
        table = pa.Table.from_pydict({**rows(ks), "label": [k % 3 if k % 4 else -1 for k in ks]}, schema=SCHEMA)
        pq.write_table(table, tmp_path / f"{n}.parquet", row_group_size=7)
        shards.append(Shard(url=str(tmp_path / f"{n}.parquet"), rows=35, bytes=0, meta={"split": "train"}))
    every = read_columns(shards, ["id", "label"])
    positions = [64, 3, 40, 41, 0, 69]
    assert take_rows(shards, ["id", "label"], positions) == {c: [every[c][p] for p in positions] for c in every}
    pos, labels = labelled_groups(shards, 10, seed=5)
    assert len(pos) == 10 and pos == sorted(pos) and labels == [every["label"][p] for p in pos]
    assert all(label >= 0 for label in labels) and len({p // 7 for p in pos}) <= 3  # whole groups, not scattered rows
    assert labelled_groups(shards, 10, seed=5) == (pos, labels) and labelled_groups(shards, 10, seed=6) != (pos, labels)


def test_evaluation_images_are_resized_on_the_shorter_side_and_centre_cropped():
    buf = io.BytesIO()
    im = Image.new("RGB", (48, 16), (255, 0, 0))
    im.paste((0, 0, 255), (16, 0, 32, 16))  # a blue middle third
    im.save(buf, format="PNG")
    [out] = load_images([buf.getvalue()], 8)
    assert out.shape == (8, 8, 3) and out.dtype == torch.uint8
    assert out[:, 2:6, 2].float().mean() > 200 and out[:, 2:6, 0].float().mean() < 50  # only the middle is kept


# -- linear probe ------------------------------------------------------------------------------------------------
def test_the_probe_separates_separable_features_and_is_at_chance_on_random_labels():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (600,), generator=g)
    x = torch.nn.functional.one_hot(y, 4).float() * 3 + torch.randn(600, 12, generator=g)[:, :4].abs() * 0.1
    x = torch.cat([x, torch.randn(600, 8, generator=g)], dim=1)  # plus noise dimensions
    fitted = linear_probe(x[:400], y[:400], x[400:], y[400:])
    assert fitted["accuracy"] == 1.0 and knn_accuracy(x[:400], y[:400], x[400:], y[400:]) == 1.0

    noise = torch.randn(1000, 32, generator=g)
    labels = (torch.rand(1000, generator=g) < 0.3).long()  # 70% class 0: the majority share is chance
    majority = (labels[600:] == 0).float().mean().item()
    got = linear_probe(noise[:600], labels[:600], noise[600:], labels[600:])["accuracy"]
    assert got <= majority + 0.03
    assert linear_probe(noise[:600], labels[:600], noise[600:], labels[600:])["accuracy"] == got  # deterministic


def test_the_probe_reports_chance_and_skips_without_labels_or_with_one_class(tmp_path):
    n = 30
    samples = write_samples(tmp_path, train=list(range(n)) * 3, val=list(range(n)), modality="image")
    result = evaluate_encoders({"trained": Oracle(n), "untrained": Constant()}, samples, image_size=16, pool=10)
    p = result["probe"]
    assert result["retrieval"] is None and p["classes"] == 3 and p["train_samples"] == 90 and p["val_samples"] == 30
    assert p["chance"] == pytest.approx(10 / 30)
    assert p["trained"]["accuracy"] == 1.0 and p["trained"]["knn_accuracy"] == 1.0
    assert p["untrained"]["accuracy"] == pytest.approx(p["chance"])  # constant features: the majority class
    assert [e["caption"] for e in result["examples"][:3]] == [LABELS[k % 3] for k in range(3)]
    flat = flat_metrics(result)
    assert flat["probe_accuracy"] == 1.0 and flat["probe_accuracy_vs_chance"] == pytest.approx(3.0)
    assert flat["untrained_probe_accuracy"] == pytest.approx(1 / 3) and "retrieval_pool" not in flat

    (tmp_path / "one").mkdir()
    one = write_samples(tmp_path / "one", train=[0, 3, 6], val=[0, 3], modality="image")  # k % 3 == 0: one class
    skipped = evaluate_encoders({"trained": Oracle(9)}, one, image_size=16, pool=2)
    assert skipped["probe"] == {"skipped": "the train split's labelled samples are all of one class"}
    assert "Linear probe skipped" in skipped["notes"][0] and "probe_accuracy" not in flat_metrics(skipped)


def test_no_labels_skips_the_probe_with_a_reason(tmp_path):
    samples = write_samples(tmp_path, train=[1, 2, 3], val=[4, 5], modality="image")
    for shard in samples.shards:  # every label -1: none
        table = pq.read_table(shard.url)
        pq.write_table(table.set_column(5, "label", pa.array([-1] * table.num_rows, pa.int32())), shard.url)
    result = evaluate_encoders({"trained": Oracle(9)}, samples, image_size=16, pool=2)
    assert result["probe"] == {"skipped": "no labelled samples in the train and validation splits"}


# -- the real Hugging Face path ------------------------------------------------------------------------------------
def clip_folder(path, texts: list[str]):
    """A tiny CLIPModel saved with save_pretrained, with a tokenizer trained on the captions (as an export)."""
    from transformers import AutoTokenizer, CLIPConfig, CLIPModel

    from pretrain.config import TokenizerConfig
    from pretrain.data.tokenizer.load import save_tokenizer
    from pretrain.data.tokenizer.train import train_tokenizer

    save_tokenizer(train_tokenizer([texts], TokenizerConfig(vocab_size=300, min_frequency=1)), str(path), 16)
    tok = AutoTokenizer.from_pretrained(path)
    config = CLIPConfig(
        text_config={"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 16, "eos_token_id": tok.eos_token_id,
                     "pad_token_id": tok.pad_token_id, "bos_token_id": tok.eos_token_id},
        vision_config={"image_size": 16, "patch_size": 4, "hidden_size": 32, "intermediate_size": 64,
                       "num_hidden_layers": 1, "num_attention_heads": 2},
        projection_dim=16)
    torch.manual_seed(1)
    CLIPModel(config).save_pretrained(path)
    return tok


def test_an_untrained_clip_folder_is_near_chance_both_ways(tmp_path):
    n = 96
    (tmp_path / "data").mkdir()
    tok = clip_folder(tmp_path / "model", [f"colour number {k}" for k in range(n)])
    assert tok.eos_token_id != 2  # CLIP pools at the argmax token id when eos is 2 (its legacy config)
    samples = write_samples(tmp_path / "data", train=list(range(n)), val=list(range(n)),
                            encode=lambda t: tok(t)["input_ids"])
    result = evaluate_model(str(tmp_path / "model"), samples, pool=16, seed=0)
    r = result["retrieval"]
    assert result["model"] == "clip" and r["pools"] == 6 and result["image_size"] == 16
    for model in ("trained", "untrained"):  # both are random networks here: recall is chance's, give or take
        for key, value in r[model].items():
            chance = r["chance"]["recall_at_1" if key.endswith("_1") else "recall_at_5"]
            assert abs(value - chance) < 0.15, (model, key, value)
        assert r[model]["i2t_recall_at_5"] >= r[model]["i2t_recall_at_1"]
    assert r["trained"] != r["untrained"]  # the untrained twin is a fresh init, not the folder's weights
    assert result["probe"]["classes"] == 3 and 0.0 <= result["probe"]["trained"]["accuracy"] <= 1.0
    again = evaluate_model(str(tmp_path / "model"), samples, pool=16, seed=0)
    assert flat_metrics(again) == flat_metrics(result)  # deterministic


def test_a_vit_folder_gets_the_probe_and_no_retrieval(tmp_path):
    from transformers import ViTConfig, ViTModel

    n = 30
    (tmp_path / "data").mkdir()
    ViTModel(ViTConfig(image_size=16, patch_size=4, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=2)).save_pretrained(tmp_path / "model")
    samples = write_samples(tmp_path / "data", train=list(range(n)) * 2, val=list(range(n)), modality="image")
    result = evaluate_model(str(tmp_path / "model"), samples, pool=10, seed=0)
    assert result["model"] == "vit" and result["retrieval"] is None
    p = result["probe"]
    assert p["train_samples"] == 60 and set(p["trained"]) >= {"accuracy", "knn_accuracy"} and "untrained" in p
    assert {"probe_accuracy", "untrained_probe_accuracy", "knn_accuracy", "probe_chance"} <= set(flat_metrics(result))


# -- the evaluate step -------------------------------------------------------------------------------------------
def image_recipe(tmp_path, **evaluate):
    tree = {"name": "clip-test", "seed": 0, "run_root": str(tmp_path / "run"),
            "sources": [{"name": "patches", "format": "images", "uri": str(tmp_path / "images"),
                         "label_field": "folder", "license": "CC0-1.0"}],
            "model": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64, "seq_len": 16,
                      "image_size": 16, "patch_size": 4, "projection_dim": 16},
            "train": {"objective": "image_text_contrastive", "max_steps": 10},
            "evaluate": {"retrieval_pool": 16, "batch_size": 32, **evaluate}}
    return resolve(validate(tree))


def test_the_evaluate_step_of_an_image_run_writes_metrics_report_and_card(tmp_path):
    from pretrain.evaluate.step import evaluate

    n = 64
    (tmp_path / "data").mkdir()
    tok = clip_folder(tmp_path / "model", [f"colour number {k}" for k in range(n)])
    samples = write_samples(tmp_path / "data", train=list(range(n)), val=list(range(n)),
                            encode=lambda t: tok(t)["input_ids"])
    recipe = image_recipe(tmp_path)
    model = Manifest(kind="model", root=str(tmp_path / "model"), fingerprint="m" * 16, stats={"parameters": 12345})
    result = evaluate(recipe, model, samples)
    stats = result.stats
    for key in ("retrieval_i2t_recall_at_1", "retrieval_t2i_recall_at_5", "retrieval_recall_at_1_vs_chance",
                "untrained_retrieval_i2t_recall_at_1", "probe_accuracy", "untrained_probe_accuracy", "probe_chance"):
        assert isinstance(stats[key], float), key
    assert stats["retrieval_pools"] == 4.0 and stats["retrieval_recall_at_1_chance"] == 1 / 16
    report = json.loads((tmp_path / "run" / "evaluate" / "report.json").read_text())
    assert report["modality"] == "image_text" and len(report["images"]["examples"]) == 8
    page = (tmp_path / "run" / "evaluate" / "report.html").read_text()
    assert 'id="plot-retrieval"' in page and 'id="plot-probe"' in page and page.count("<img ") == 8
    assert "Zero-shot retrieval" in (tmp_path / "run" / "evaluate" / "report.md").read_text()
    card = (tmp_path / "model" / "README.md").read_text()
    meta = re.match(r"---\n(.*?)\n---\n", card, re.S).group(1)
    assert "pipeline_tag: zero-shot-image-classification" in meta and "recall@1" in meta
    assert f"{stats['retrieval_i2t_recall_at_1']:.3g}" in card.split("## Evaluation", 1)[1]
    assert "examples" not in result.extra["images"]  # the manifest carries numbers, not pictures
    assert evaluate(recipe, model, samples).fingerprint == result.fingerprint  # finished: reused


def test_too_small_a_validation_split_is_a_recipe_error(tmp_path):
    n = 10
    samples = write_samples(tmp_path, train=list(range(n)), val=list(range(n)))
    with pytest.raises(RecipeError, match=r"split\.val_fraction"):
        evaluate_encoders({"trained": Oracle(n)}, samples, image_size=16, pool=16)


def test_pretrain_evaluate_measures_a_clip_folder_against_a_run_root(tmp_path):
    from pretrain.data.tokenizer.load import tokenizer_hash
    from pretrain.evaluate.standalone import EvaluateOptions, summary_lines
    from pretrain.evaluate.standalone import evaluate_model as standalone

    n = 48
    recipe = image_recipe(tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "recipe.json").write_text(recipe.to_json())
    tok = clip_folder(tmp_path / "model", [f"colour number {k}" for k in range(n)])
    (tmp_path / "tokens").mkdir()
    samples = write_samples(tmp_path / "tokens", train=list(range(n)), val=list(range(n)),
                            encode=lambda t: tok(t)["input_ids"])
    samples.extra["tokenizer_hash"] = tokenizer_hash(str(tmp_path / "model"))
    samples.root = recipe.url("tokens")
    samples.save()
    report = standalone(str(tmp_path / "model"), str(tmp_path / "out"), EvaluateOptions(run_root=str(tmp_path / "run")))
    assert report["objective"] == "image_text_contrastive" and report["images"]["retrieval"]["pools"] == 3
    assert (tmp_path / "out" / "report.html").is_file() and "plot-retrieval" in (tmp_path / "out" / "report.html"
                                                                                  ).read_text()
    lines = "\n".join(summary_lines(report))
    assert "i2t recall@1" in lines and "linear probe accuracy" in lines

    samples.extra["tokenizer_hash"] = "another"  # captions made with another tokenizer: no retrieval
    samples.save()
    other = standalone(str(tmp_path / "model"), str(tmp_path / "out2"), EvaluateOptions(run_root=str(tmp_path / "run")))
    assert other["images"]["retrieval"] is None and other["notes"][0].startswith("Retrieval skipped: the model's")
    with pytest.raises(ValueError, match=r"a clip model .*neither a causal nor.*--run-root"):
        standalone(str(tmp_path / "model"), str(tmp_path / "out3"), EvaluateOptions())
