"""Dedup of image samples through the staged machinery: exact by image_hash, near by pHash within image_distance.

Two partitions of one source go through the real filter step, then dedup. Planted: an exact copy (equal
image_hash), a near-copy cluster of three (2 and 3 bits apart, the largest image kept even though it comes later),
a tie on size (the earliest kept), a pair exactly ``image_distance`` bits apart in four different chunks (found),
a pair 5 bits apart inside one chunk (a candidate, rejected by the Hamming check), a pair 5 bits apart in five
chunks (never a candidate), and a distinct pair 20 bits apart; the rest are random pHashes.
"""

from __future__ import annotations

import io
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pretrain.config import resolve, validate
from pretrain.data.dedup import dedup
from pretrain.data.dedup.images import band_keys, chunks, hamming
from pretrain.data.documents import SAMPLE_SCHEMA, ShardWriter
from pretrain.data.filters import filter_shard
from pretrain.manifest import Manifest

RNG = np.random.default_rng(7)


def flip(h: int, *bits: int) -> int:
    """``h`` (an int64 bit pattern) with ``bits`` flipped."""
    x = np.array([h], np.int64).view(np.uint64)
    for b in bits:
        x ^= np.uint64(1 << b)
    return int(x.view(np.int64)[0])


def random_hash() -> int:
    return int(RNG.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, dtype=np.int64))


EXACT, SMALL, FAR, TIE, EDGE4, SPLIT5, SPREAD5 = (random_hash() for _ in range(7))
# partition "a" (first in run order), partition "b": (key, pHash, side of the square original, image_hash or None)
PLANTED = {
    "a": [("exact", EXACT, 64, "e" * 32), ("small", SMALL, 32, None), ("far", FAR, 64, None), ("tie", TIE, 48, None),
          ("edge4", EDGE4, 64, None), ("split5", SPLIT5, 64, None), ("spread5", SPREAD5, 64, None)],
    "b": [("exact-copy", EXACT, 64, "e" * 32), ("small-near", flip(SMALL, 3, 40), 96, None),
          ("small-near3", flip(SMALL, 5, 17, 60), 32, None), ("far-20", flip(FAR, *range(0, 60, 3)), 64, None),
          ("tie-near", flip(TIE, 63), 48, None), ("edge4-near", flip(EDGE4, 0, 13, 26, 39), 64, None),
          ("split5-near", flip(SPLIT5, 0, 1, 2, 3, 4), 64, None),
          ("spread5-near", flip(SPREAD5, 0, 13, 26, 39, 52), 64, None)],
}
REMOVED = {"exact-copy": "exact", "small": "fuzzy", "small-near3": "fuzzy", "tie-near": "fuzzy",
           "edge4-near": "fuzzy"}
RANDOM_PER_PART = 14
RANDOM = {part: [random_hash() for _ in range(RANDOM_PER_PART)] for part in PLANTED}


def png(seed: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), (seed % 256, (seed * 31) % 256, 90)).save(out, format="PNG")
    return out.getvalue()


def rows_of(part: str) -> list[dict]:
    planted = PLANTED[part] + [(f"random{i}", h, 64, None) for i, h in enumerate(RANDOM[part])]
    rows = []
    for i, (key, phash, side, image_hash) in enumerate(planted):
        rows.append({"id": f"{part}-{key}", "text": f"a picture called {key} number {i}", "source": "pics",
                     "source_id": f"{part}/{i}.png", "url": f"/data/{part}/{i}.png", "date": "", "license": "",
                     "meta": "{}", "image": png(i), "width": side, "height": side, "label": "",
                     "image_hash": image_hash or f"{part}{i:031x}", "phash": phash})
    return rows


def recipe_at(root, **dedup_cfg):
    return resolve(validate({
        "name": "pics-run", "run_root": str(root), "train": {"objective": "image_text_contrastive"},
        "sources": [{"name": "pics", "format": "images", "uri": "/data/pics"}],
        "dedup": {"prefix_shards": 3, "band_shards": 2, **dedup_cfg},
    }))


def samples(root, part: str) -> Manifest:
    rows = rows_of(part)
    url = os.path.join(root, "ingest", f"{part}.parquet")
    with ShardWriter(url, SAMPLE_SCHEMA) as writer:
        writer.write_rows(rows)
        shard = writer.close()
    partition = {"source": "pics", "url": f"/data/pics/{part}", "rel": part, "unit": "file", "start": 0, "end": -1,
                 "limit": 0}
    return Manifest(kind="documents", root=str(root), fingerprint=f"samples-{part}", shards=[shard],
                    stats={"records": len(rows) + 1, "documents": len(rows), "skipped": {"undecodable_image": 1}},
                    extra={"partition": partition})


@pytest.fixture(scope="module")
def filtered(tmp_path_factory):
    root = tmp_path_factory.mktemp("img-dedup")
    recipe = recipe_at(root / "run")
    out = [filter_shard(recipe, samples(root, part)) for part in ("b", "a")]  # dedup orders them itself
    everything = [r for p in ("a", "b") for r in rows_of(p)]
    hashes = np.array([r["phash"] for r in everything], np.int64)
    i, j = np.triu_indices(len(hashes), 1)
    close = {(everything[a]["id"], everything[b]["id"]) for a, b in zip(i, j, strict=True)
             if hamming(hashes[[a]], hashes[[b]])[0] <= 6}
    assert all("random" not in a + b for a, b in close)  # random pHashes sit far from everything
    assert all(o.stats["dropped"] == 0 for o in out)
    return root, out


def ids_of(manifest: Manifest) -> list[str]:
    return [i for s in manifest.shards for i in pq.read_table(s.url, columns=["id"]).column("id").to_pylist()]


def test_exact_and_near_copies_are_removed_and_the_largest_image_is_kept(filtered):
    root, out = filtered
    result = dedup(recipe_at(root / "run"), out)
    kept = set(ids_of(result))
    total = 2 * RANDOM_PER_PART + len(PLANTED["a"]) + len(PLANTED["b"])
    assert len(kept) == total - len(REMOVED)
    for key in REMOVED:
        assert not any(i.endswith("-" + key) for i in kept), key
    for keeper in ("a-exact", "b-small-near", "a-tie", "a-edge4", "a-far", "b-far-20", "a-split5", "b-split5-near",
                   "a-spread5", "b-spread5-near"):
        assert keeper in kept
    s = result.stats
    assert (s["exact_duplicates"], s["fuzzy_duplicates"], s["duplicates"]) == (1, 4, 5)
    assert s["documents_in"] == total and s["documents_out"] == total - 5
    assert s["clusters"]["exact_groups"] == 1 and s["clusters"]["fuzzy_clusters"] == 3
    assert s["clusters"]["clusters"] == 4  # a-exact, b-small-near, a-tie, a-edge4 each keep a cluster
    table = pq.read_table(result.shards[0].url)
    assert table.schema.equals(SAMPLE_SCHEMA)  # the samples schema, images included, flows on
    assert all(len(b) > 0 for b in table.column("image").to_pylist())


def test_the_cluster_report_names_captions_and_ids_and_the_ledger_adds_up(filtered):
    root, out = filtered
    result = dedup(recipe_at(root / "run"), out)
    samples = result.extra["clusters"]["samples"]
    biggest = max(samples, key=lambda c: c["size"])
    assert biggest["size"] == 3
    roles = {m["id"]: m["role"] for m in biggest["members"]}
    assert roles == {"b-small-near": "kept", "a-small": "fuzzy", "b-small-near3": "fuzzy"}
    member = next(m for m in biggest["members"] if m["id"] == "b-small-near")
    assert member["caption"].startswith("a picture called small-near") and member["width"] == 96
    assert "image" not in member and member["image_hash"]
    book = result.extra["ledger"]["sources"]["pics"]
    assert book["balanced"] and book["duplicates"] == 5 and book["read"] == book["written"] + 2


def test_switches_and_distance(filtered, tmp_path):
    _, out = filtered
    no_fuzzy = dedup(recipe_at(tmp_path / "nf", fuzzy=False), out)
    assert (no_fuzzy.stats["exact_duplicates"], no_fuzzy.stats["fuzzy_duplicates"]) == (1, 0)
    no_exact = dedup(recipe_at(tmp_path / "ne", exact=False), out)  # the exact copy is a near copy at distance 0
    assert (no_exact.stats["exact_duplicates"], no_exact.stats["fuzzy_duplicates"]) == (0, 5)
    wide = dedup(recipe_at(tmp_path / "wide", image_distance=5), out)  # both 5-bit pairs join now
    assert wide.stats["fuzzy_duplicates"] == 6 and "b-spread5-near" not in ids_of(wide)
    assert "b-split5-near" not in ids_of(wide)
    assert dedup(recipe_at(tmp_path / "wide", image_distance=5), out).fingerprint == wide.fingerprint  # reused


def test_chunks_cover_the_hash_and_any_pair_within_the_distance_shares_a_band():
    rng = np.random.default_rng(0)
    for distance in (0, 1, 4, 10, 32):
        parts = chunks(distance)
        assert len(parts) == distance + 1 and sum(w for _, w in parts) == 64
        assert [s for s, _ in parts] == list(np.cumsum([0] + [w for _, w in parts[:-1]]))
        base = rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, size=200, dtype=np.int64)
        near = np.array([flip(int(h), *rng.choice(64, size=distance, replace=False)) for h in base], np.int64)
        assert (hamming(base, near) == distance).all()
        assert (band_keys(base, distance) == band_keys(near, distance)).any(axis=1).all()


def test_hamming_counts_bits_of_negative_patterns():
    assert hamming(np.array([-1], np.int64), np.array([0], np.int64))[0] == 64
    assert hamming(np.array([flip(0, 63)], np.int64), np.array([0], np.int64))[0] == 1
