"""Deduplication across the whole run: exact copies, then near copies (MinHash + LSH), as staged fan-out.

Stages (each a function over one unit, idempotent by fingerprint, writing Parquet under ``dedup/``):
``sketch`` per partition (exact keys by prefix shard, signatures, band keys), ``buckets`` per exact
prefix shard and per LSH band (duplicate keys, candidate pairs), ``cluster`` once (verified pairs ->
connected components -> removals per partition; memory grows with the pairs, not the corpus),
``remove`` per partition (the deduplicated shard), ``finish`` (the documents manifest). KFP runs
them as ParallelFor fan-outs; :func:`dedup` runs them in order in one process. Image samples go through the
same stages with exact keys from ``image_hash`` and bands cut from the 64-bit pHash (see ``images``).
"""

from __future__ import annotations

from pretrain.data.dedup.exact import text_key
from pretrain.data.dedup.stages import dedup

__all__ = ["dedup", "text_key"]
