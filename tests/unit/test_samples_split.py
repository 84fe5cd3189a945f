"""The tokenize step of image runs: samples -> train/val split shards, the caption tokenizer, the samples manifest."""

from __future__ import annotations

import io
import itertools
import os

import pyarrow.parquet as pq
import pytest
from PIL import Image

from pretrain.config import RecipeError, resolve, validate
from pretrain.data import samples_split
from pretrain.data import tokenize as step
from pretrain.data.documents import SAMPLE_SCHEMA, ShardWriter
from pretrain.data.tokenize import is_validation
from pretrain.manifest import Manifest

COLORS = ("red", "green", "blue", "yellow", "purple", "orange")
SHAPES = ("circle", "square", "triangle", "star", "cross")
PLACES = ("top left", "top right", "bottom left", "bottom right", "center")
SEQ_LEN = 16
REPEAT = 4  # every caption a few times (different samples): one shard spans several row groups
LONG = "a red circle at the top left next to a big blue square and a small green triangle below a yellow star"


def png(i: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), (i % 256, (7 * i) % 256, 40)).save(out, format="PNG")
    return out.getvalue()


def captioned() -> list[tuple[str, str]]:
    """(caption, label) of every sample: shapes described, a few long captions and a few with none."""
    out = [(f"a {c} {s} at the {p}", s) for c, s, p in itertools.product(COLORS, SHAPES, PLACES)]
    out += [(LONG, "circle")] * 6 + [("", "square")] * 9 + [("an unlabelled blot", "")] * 3
    return out * REPEAT


def samples(root) -> Manifest:
    """A deduplicated samples manifest: two sources, three shards."""
    items = captioned()
    layout = {"pics": [items[0::3] + items[1::3]], "more": [items[2::6], items[5::6]]}
    shards = []
    for source, parts in layout.items():
        for k, part in enumerate(parts):
            url = os.path.join(root, "dedup", f"{source}-{k}.parquet")
            with ShardWriter(url, SAMPLE_SCHEMA) as writer:
                writer.write_rows([{"id": f"{source}-{k}-{j}", "text": text, "source": source, "source_id": str(j),
                                    "url": "", "date": f"2024-0{1 + j % 9}-01", "license": "", "meta": "{}",
                                    "image": png(j), "width": 64, "height": 64, "label": label,
                                    "image_hash": f"{source}{k}{j:030x}", "phash": j}
                                   for j, (text, label) in enumerate(part)])
                shard = writer.close()
            shard.meta = {"source": source}
            shards.append(shard)
    return Manifest(kind="documents", root=str(root), fingerprint="samples-v1", shards=shards)


def recipe_at(root, objective: str = "image_text_contrastive", val_fraction: float = 0.25, **evaluate):
    return resolve(validate({
        "name": "pics-run", "run_root": str(root / "run"), "train": {"objective": objective},
        "sources": [{"name": "pics", "format": "images", "uri": "/data/pics"},
                    {"name": "more", "format": "webdataset", "uri": "/data/more"}],
        "tokenizer": {"vocab_size": 1000}, "split": {"val_fraction": val_fraction}, "model": {"seq_len": SEQ_LEN},
        "images": {"size": 48}, "evaluate": {"retrieval_pool": 20, **evaluate},
    }))


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    root = tmp_path_factory.mktemp("split")
    docs = samples(root)
    recipe = recipe_at(root)
    return root, docs, recipe, step.tokenize(recipe, docs, workers=1)


def rows(manifest: Manifest, split_name: str) -> list[dict]:
    return [r for s in manifest.shards if s.meta["split"] == split_name for r in pq.read_table(s.url).to_pylist()]


def test_the_manifest_names_what_training_and_evaluation_read(split):
    _, docs, recipe, out = split
    assert out.kind == "samples" and out.root == recipe.url("tokens")
    x = out.extra
    assert x["modality"] == "image_text" and x["tokenizer"] == recipe.url("tokenizer")
    assert x["vocab_size"] > 256 and x["eos_id"] == 0 and x["pad_id"] == 1 and len(x["tokenizer_hash"]) == 16
    assert x["labels"] == sorted(SHAPES) and x["image_size"] == 48
    assert len(out.shards) == 2 * len(docs.shards) == 6
    for shard in out.shards:
        assert set(shard.meta) == {"split", "source"} and shard.meta["split"] in ("train", "val")
        table = pq.read_table(shard.url)
        assert table.schema.equals(samples_split.SPLIT_SCHEMA) and table.num_rows == shard.rows
        assert shard.checksum and shard.bytes == os.path.getsize(shard.url)
        groups = [pq.ParquetFile(shard.url).metadata.row_group(i).num_rows
                  for i in range(pq.ParquetFile(shard.url).metadata.num_row_groups)]
        assert all(g <= samples_split.ROW_GROUP_ROWS for g in groups) and sum(groups) == shard.rows
    assert any(s.rows > samples_split.ROW_GROUP_ROWS for s in out.shards)  # a shard with several groups


def test_counts_add_up_and_samples_without_a_caption_are_dropped(split):
    _, docs, _, out = split
    items = captioned()
    no_caption = sum(1 for text, _ in items if not text)
    s = out.stats
    assert s["no_caption"] == no_caption == 9 * REPEAT
    assert s["train_samples"] + s["val_samples"] + s["no_caption"] == len(items) == sum(x.rows for x in docs.shards)
    assert s["val_samples"] >= 20 and s["train_samples"] > s["val_samples"]
    assert sum(r["train_samples"] + r["val_samples"] + r["no_caption"] for r in s["by_source"].values()) == len(items)
    assert set(s["by_source"]) == {"pics", "more"}
    assert s["by_source"]["more"]["train_documents"] == s["by_source"]["more"]["train_samples"]
    assert 1 < s["val_distinct_captions"] <= s["val_samples"]
    assert sum(out.extra["dates"]["pics"]["train"]["by_year"].values()) == s["by_source"]["pics"]["train_samples"]


def test_split_by_id_hash_and_labels_by_index(split):
    _, _, recipe, out = split
    labels = out.extra["labels"]
    for name in ("train", "val"):
        for r in rows(out, name):
            assert is_validation(r["id"], recipe.split.val_fraction, recipe.seed) == (name == "val")
            assert r["text"] and r["image"] and r["source"] in r["id"]
            expected = "" if r["text"] == "an unlabelled blot" else r["text"].split()[2]  # the shape
            assert (labels[r["label"]] if r["label"] >= 0 else "") == expected


def test_captions_end_with_one_eos_and_decode_back_with_the_saved_tokenizer(split):
    from transformers import AutoTokenizer

    _, _, _, out = split
    tok = AutoTokenizer.from_pretrained(out.extra["tokenizer"])
    eos = out.extra["eos_id"]
    assert tok.eos_token_id == eos and tok.pad_token_id == out.extra["pad_id"]
    truncated = 0
    for r in rows(out, "train") + rows(out, "val"):
        ids = r["caption"]
        assert 2 <= len(ids) <= SEQ_LEN and ids[-1] == eos and ids.count(eos) == 1
        text, full = tok.decode(ids[:-1]), tok(r["text"], add_special_tokens=False).input_ids
        assert tok(r["text"], truncation=True).input_ids == ids  # a user's plain call gives the training ids
        if len(full) > SEQ_LEN - 1:
            truncated += 1
            assert ids[:-1] == full[:SEQ_LEN - 1] and r["text"].startswith(text) and text != r["text"]
        else:
            assert ids[:-1] == full and text == r["text"]
    assert truncated == 6 * REPEAT  # the long captions, and only they, were cut to seq_len - 1 tokens


def test_the_dag_path_and_a_second_call_reuse_everything(split, tmp_path):
    _, docs, recipe, out = split
    mtimes = {s.url: os.path.getmtime(s.url) for s in out.shards}
    again = step.tokenize(recipe, docs, workers=1)
    assert again.fingerprint == out.fingerprint and again.stats == out.stats
    assert step.prepare(recipe, docs).fingerprint == out.fingerprint
    assert step.finish(recipe, step.load_plan(recipe)).stats == out.stats
    assert {s.url: os.path.getmtime(s.url) for s in out.shards} == mtimes
    # the KFP components' calls, one partition at a time, write the same split
    other = recipe_at(tmp_path)
    plan = step.prepare(other, docs)
    assert isinstance(plan, samples_split.SamplePlan) and len(plan.partitions) == len(docs.shards)
    for p in range(len(plan.partitions)):
        step.encode_one(other.to_json(), p)
    fanned = step.finish(other, step.load_plan(other))
    assert fanned.stats == out.stats and [s.rows for s in fanned.shards] == [s.rows for s in out.shards]


def test_a_validation_split_smaller_than_a_retrieval_pool_names_val_fraction(split, tmp_path):
    root, docs, _, out = split  # the same run root: the finished split is reused, and checked again
    with pytest.raises(RecipeError, match=r"split\.val_fraction.*retrieval_pool"):
        step.tokenize(recipe_at(root, retrieval_pool=out.stats["val_samples"] + 1), docs, workers=1)
    with pytest.raises(RecipeError, match=r"split\.val_fraction"):
        step.tokenize(recipe_at(tmp_path, val_fraction=0.002), docs, workers=1)
    # enough samples but not enough distinct captions (every caption comes REPEAT times): a pool cannot be filled
    distinct = out.stats["val_distinct_captions"]
    assert distinct < out.stats["val_samples"]
    with pytest.raises(RecipeError, match=rf"only {distinct} distinct captions.*retrieval_pool"):
        step.tokenize(recipe_at(root, retrieval_pool=distinct + 1), docs, workers=1)


def test_image_only_runs_keep_uncaptioned_samples_and_need_no_tokenizer(tmp_path):
    docs = samples(tmp_path)
    recipe = recipe_at(tmp_path, "image_contrastive")
    out = step.tokenize(recipe, docs, workers=1)
    x = out.extra
    assert (x["modality"], x["tokenizer"], x["vocab_size"], x["eos_id"], x["tokenizer_hash"]) == (
        "image", "", 0, None, "")
    assert not os.path.exists(recipe.url("tokenizer"))
    assert out.stats["no_caption"] == 0 and out.stats["train_samples"] + out.stats["val_samples"] == len(captioned())
    assert all(r["caption"] == [] for r in rows(out, "val"))
    assert x["labels"] == sorted(SHAPES)


def test_an_image_text_run_whose_samples_have_no_captions_says_so(tmp_path):
    recipe = recipe_at(tmp_path)
    with pytest.raises(RecipeError, match=r"none of the 12 samples has a caption.*image_contrastive"):
        samples_split.check_validation(recipe, {"train_samples": 0, "val_samples": 0, "no_caption": 12})
    with pytest.raises(RecipeError, match=r"split\.val_fraction"):  # some captions, too few held out: as before
        samples_split.check_validation(recipe, {"train_samples": 30, "val_samples": 0, "no_caption": 12})
