"""Stage 1, per partition: read its kept documents once; write exact keys, MinHash signatures, band keys.

Streams the partition's shards in record batches. What it holds until the end is per partition and
small (16 bytes of key, 8 per band, per document); signatures are streamed to their file.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pretrain import storage
from pretrain.data.dedup import exact, minhash, tables
from pretrain.data.dedup.plan import Plan
from pretrain.data.documents import iter_batches

BAND_SCHEMA = pa.schema([("key", pa.uint64()), ("part", pa.int32()), ("row", pa.int64())])


def signature_schema(num_perm: int) -> pa.Schema:
    return pa.schema([("row", pa.int64()), ("length", pa.int64()),
                      ("sig", pa.list_(pa.uint32(), num_perm))])


def sketch_partition(plan: Plan, part: int) -> dict[str, int]:
    """Exact keys into prefix files; signatures (documents with a shingle) and band keys into their files."""
    if (done := plan.done("sketch", part)) is not None:
        return done.stats
    cfg = plan.config
    keys, rows, bands, band_rows = [], [], [], []
    stats = {"documents": 0, "without_shingles": 0}
    with storage.atomic_path(plan.signatures_url(part)) as tmp:
        writer = pq.ParquetWriter(tmp, signature_schema(cfg.num_perm), compression="zstd")
        offset = 0
        for shard in plan.filtered[part].shards:
            for batch in iter_batches(shard.url, columns=["text"]):
                texts = batch.column("text")
                row = np.arange(offset, offset + len(texts), dtype=np.int64)
                offset += len(texts)
                if cfg.exact:
                    keys.append(exact.keys(texts))
                    rows.append(row)
                if cfg.fuzzy:
                    sig, has = minhash.signatures(texts, cfg.shingle_size, cfg.num_perm, cfg.seed)
                    stats["without_shingles"] += int((~has).sum())
                    lengths = pc.utf8_length(texts.fill_null("")).to_numpy(zero_copy_only=False)
                    flat = pa.array(sig[has].reshape(-1), pa.uint32())
                    writer.write_table(pa.table({
                        "row": row[has], "length": lengths[has].astype(np.int64),
                        "sig": pa.FixedSizeListArray.from_arrays(flat, cfg.num_perm),
                    }))
                    bands.append(minhash.band_keys(sig[has], cfg.bands, cfg.rows))
                    band_rows.append(row[has])
        writer.close()
        stats["documents"] = offset
    if cfg.exact:
        exact.write_keys(plan, part, _stack(keys, (0, 2), np.uint64), _stack(rows, (0,), np.int64))
    if cfg.fuzzy:
        key, row = _stack(bands, (0, cfg.bands), np.uint64), _stack(band_rows, (0,), np.int64)
        for b in range(cfg.bands):
            tables.write(pa.table({"key": key[:, b], "part": np.full(len(row), part, np.int32), "row": row},
                                  schema=BAND_SCHEMA), plan.band_url(b, part))
    plan.mark("sketch", part, stats)
    return stats


def _stack(parts: list[np.ndarray], empty_shape: tuple[int, ...], dtype) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(empty_shape, dtype)
