"""Exact dedup across all kept shards: the first copy (in shard order) of each normalized text wins.

Texts are hashed after whitespace normalization with xxh3-128; only the 16-byte digests are held in
memory, never the documents. Fuzzy (MinHash/LSH) dedup is a later stage with the same contract.
"""

from __future__ import annotations

import collections
import re

import pyarrow as pa
import xxhash

from pretrain.config import Recipe, fingerprint
from pretrain.data import ledger
from pretrain.data.documents import ShardWriter, iter_batches
from pretrain.data.readers.base import Partition
from pretrain.manifest import Manifest, Shard, merge_stats, reuse

_SPACE = re.compile(r"\s+")


def text_key(text: str) -> bytes:
    return xxhash.xxh3_128_digest(_SPACE.sub(" ", text).strip().encode("utf-8", "surrogatepass"))


def dedup(recipe: Recipe, filtered: list[Manifest]) -> Manifest:
    root = recipe.url("dedup")
    ordered = sorted(filtered, key=lambda m: (m.extra["partition"]["source"],
                                              Partition.from_dict(m.extra["partition"]).key))
    fp = fingerprint(recipe.dedup.model_dump(), [m.fingerprint for m in ordered])
    if (done := reuse(root, fp)) is not None:
        return done
    seen: set[bytes] = set()
    shards: list[Shard] = []
    per_source: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for n, manifest in enumerate(ordered):
        source = manifest.extra["partition"]["source"]
        with ShardWriter(f"{root}/part-{n:05d}.parquet") as writer:
            for shard in manifest.shards:
                for batch in iter_batches(shard.url):
                    keep = []
                    for text in batch.column("text").to_pylist():
                        key = text_key(text)
                        keep.append(key not in seen or not recipe.dedup.exact)
                        seen.add(key)
                    table = pa.Table.from_batches([batch]).filter(pa.array(keep))
                    writer.write_table(table)
                    per_source[source]["documents_in"] += batch.num_rows
                    per_source[source]["duplicates"] += batch.num_rows - table.num_rows
            out = writer.close()
        out.meta = {"source": source}
        shards.append(out)
    stats = merge_stats(dict(c) for c in per_source.values())
    stats["documents_out"] = sum(s.rows for s in shards)
    stats["by_source"] = {k: dict(v) for k, v in per_source.items()}
    result = Manifest(kind="documents", root=root, fingerprint=fp, shards=shards, stats=stats,
                      config=recipe.dedup.model_dump(),
                      extra={"filter_stats": merge_stats(m.stats for m in ordered),
                             "ledger": ledger.build(ordered, stats["by_source"])})
    result.save()
    return result
