"""The filter step on image samples: the image rules (original size), the caption rules, stats and the ledger."""

from __future__ import annotations

import io
import os

import pyarrow.parquet as pq
import pytest
from PIL import Image

from pretrain.config import resolve, validate
from pretrain.data import ledger
from pretrain.data.documents import DROPPED_SAMPLE_SCHEMA, SAMPLE_SCHEMA, ShardWriter
from pretrain.data.filters import filter_shard
from pretrain.data.filters.images import aspect
from pretrain.manifest import Manifest

PART = {"source": "pics", "url": "/data/pics", "rel": "a", "unit": "file", "start": 0, "end": -1, "limit": 0}
TOXIC = "bastard"  # on better-profanity's list (the builtin toxic word list), not among the neutral words


def png(width: int, height: int, color: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (min(width, 64), min(height, 64)), color).save(out, format="PNG")
    return out.getvalue()


def sample(i: int, caption: str, width: int = 64, height: int = 64) -> dict:
    """A samples-shard row: ``width``/``height`` are the original size the rules judge, the stored image is small."""
    return {"id": f"pics-{i}", "text": caption, "source": "pics", "source_id": f"{i}.png", "url": f"/data/{i}.png",
            "date": "", "license": "", "meta": "{}", "image": png(width, height, (i * 7 % 256, 80, 160)),
            "width": width, "height": height, "label": "", "image_hash": f"{i:032x}", "phash": i}


# (row, expected reason or None = kept, expected value)
CASES = [
    (sample(0, "a red circle on a blue background"), None, None),
    (sample(1, "", 40, 300), None, None),  # no caption passes, aspect 7.5 > 4 would not (max_aspect set below)
    (sample(2, "a small green square", 20, 40), "images.min_size", "20"),
    (sample(3, "a long thin strip", 250, 50), "images.max_aspect", "5"),
    (sample(4, "a tiny and thin one", 10, 200), "images.min_size", "10"),  # the first rule that trips names it
    (sample(5, "circle"), "min_words", "1"),
    (sample(6, " ".join(["shape"] * 12)), "max_words", "12"),
    (sample(7, "xkcdqwrtz bvnmplkjh zzxcvbnmq"), "gibberish.max_score", "1"),
    (sample(8, f"a photo of a {TOXIC} dog in the park"), "toxic.max_fraction", "0.1111"),
    (sample(9, "write to john.doe@example.com about the red square"), None, None),
    (sample(10, "a blue triangle at the top left", 33, 32), None, None),
]


def recipe_at(root, *, images: dict | None = None, caption: dict | None = None):
    return resolve(validate({
        "name": "pics-run", "run_root": str(root / "run"),
        "sources": [{"name": "pics", "format": "images", "uri": str(root / "pics")}],
        "train": {"objective": "image_text_contrastive"},
        "filter": {"images": {"min_size": 32, "max_aspect": 8.0, **(images or {})},
                   "profiles": {"caption": {"min_words": 2, "max_words": 10, **(caption or {})}}},
    }))


def samples_manifest(root, rows: list[dict]) -> Manifest:
    url = os.path.join(root, "ingest", "pics.parquet")
    with ShardWriter(url, SAMPLE_SCHEMA) as writer:
        writer.write_rows(rows)
        shard = writer.close()
    ingest_stats = {"records": len(rows) + 3, "documents": len(rows), "skipped": {"undecodable_image": 2,
                                                                                   "too_many_pixels": 1}}
    return Manifest(kind="documents", root=str(root), fingerprint=f"samples-{len(rows)}", shards=[shard],
                    stats=ingest_stats, extra={"partition": PART})


@pytest.fixture
def filtered(tmp_path):
    recipe = recipe_at(tmp_path, images={"max_aspect": 4.0})
    rows = [row for row, _, _ in CASES]
    rows[1] = sample(1, "", 40, 100)  # aspect 2.5: kept
    docs = samples_manifest(tmp_path, rows)
    return recipe, docs, filter_shard(recipe, docs)


def test_image_and_caption_rules_drop_with_reason_and_value_and_keep_the_row_aside(filtered):
    _, _, out = filtered
    kept = pq.read_table(out.shards[0].url)
    dropped = pq.read_table(out.extra["dropped"][0]["url"])
    assert kept.schema.equals(SAMPLE_SCHEMA) and dropped.schema.equals(DROPPED_SAMPLE_SCHEMA)
    got = {r["id"]: (r["reason"], r["value"]) for r in dropped.to_pylist()}
    for row, reason, value in CASES:
        if reason is None:
            assert row["id"] not in got and row["id"] in kept.column("id").to_pylist()
        else:
            assert got[row["id"]][0] == reason, row["id"]
            if value is not None:
                assert got[row["id"]][1] == value, row["id"]
    # the image travels with the row either way: the audit can look at what was dropped
    by_id = {r["id"]: r for r in dropped.to_pylist()}
    assert by_id["pics-2"]["image"] == CASES[2][0]["image"] and by_id["pics-2"]["width"] == 20
    assert out.extra["profile"] == "caption" and out.extra["samples"] is True


def test_pii_is_redacted_in_a_kept_caption_as_in_text(filtered):
    _, _, out = filtered
    kept = {r["id"]: r for r in pq.read_table(out.shards[0].url).to_pylist()}
    assert kept["pics-9"]["text"] == "write to <EMAIL> about the red square"
    assert out.stats["pii_redacted"] == {"email": 1} and out.stats["transformed"] == {"pii": 1}
    assert kept["pics-9"]["image"] == CASES[9][0]["image"]  # the rest of the row as it was


def test_counts_add_up_and_the_ledger_balances(filtered):
    _, docs, out = filtered
    s = out.stats
    assert s["documents_in"] == len(CASES) == s["kept"] + s["dropped"]
    assert s["kept"] == out.shards[0].rows == 4 and s["dropped"] == out.extra["dropped"][0]["rows"] == 7
    assert s["dropped_by_reason"] == {"images.min_size": 2, "images.max_aspect": 1, "min_words": 1, "max_words": 1,
                                      "gibberish.max_score": 1, "toxic.max_fraction": 1}
    # a sample's bytes: its caption's and its stored image's (the data funnel counts both)
    assert s["bytes_in"] == sum(len(row["text"].encode()) + len(row["image"]) for row, _, _ in CASES)
    redaction = len(CASES[9][0]["text"].encode()) - len(b"write to <EMAIL> about the red square")
    assert s["bytes_kept"] + sum(s["bytes_dropped_by_reason"].values()) == s["bytes_in"] - redaction
    assert out.extra["ingest_stats"] == docs.stats
    book = ledger.build([out], {"pics": {"duplicates": 1}})
    row = book["sources"]["pics"]
    assert row["read"] == len(CASES) + 3 and row["written"] == len(CASES) and row["deduplicated"] == 3
    assert row["balanced"] and book["total"]["balanced"]


def test_a_second_call_reuses_the_shards(filtered):
    recipe, docs, out = filtered
    mtime = os.path.getmtime(out.shards[0].url)
    again = filter_shard(recipe, docs)
    assert again.fingerprint == out.fingerprint and again.stats == out.stats
    assert os.path.getmtime(out.shards[0].url) == mtime


def test_rules_switch_off_and_settings_apply(tmp_path):
    rows = [row for row, _, _ in CASES]
    off = recipe_at(tmp_path, images={"enabled": False},
                    caption={"min_words": 0, "max_words": 200, "gibberish": {"enabled": False},
                             "toxic": {"enabled": False}, "pii": {"enabled": False}})
    out = filter_shard(off, samples_manifest(tmp_path, rows))
    assert out.stats["dropped"] == 0 and out.stats["kept"] == len(rows) and not out.stats["pii_redacted"]
    strict = recipe_at(tmp_path / "strict", images={"min_size": 64, "max_aspect": None})
    out = filter_shard(strict, samples_manifest(tmp_path / "strict", rows))
    reasons = out.stats["dropped_by_reason"]
    assert reasons["images.min_size"] == 5 and "images.max_aspect" not in reasons  # 40x300 and 33x32 too, now


def test_aspect_of_degenerate_sizes():
    assert aspect(100, 25) == aspect(25, 100) == 4.0
    assert aspect(0, 10) == float("inf")
