"""Stage 1, per partition: read its kept documents once; write exact keys, MinHash signatures, band keys.

Streams the partition's shards in record batches. Two files per partition, whatever the number of
bands and prefix shards (small files are what made this stage slow): the signatures file, streamed
batch by batch, holds each document's row, length, signature and one column per LSH band (the
bucket stage of band ``b`` reads only column ``band_column(b)``); the exact keys file holds one row
group per prefix shard. What it holds until the end is per partition and small: 24 bytes of exact
key and row per document.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pretrain import storage
from pretrain.data.dedup import exact, images, minhash
from pretrain.data.dedup.plan import Plan
from pretrain.data.documents import iter_batches

BAND_SCHEMA = pa.schema([("key", pa.uint64()), ("part", pa.int32()), ("row", pa.int64())])


def band_column(band: int) -> str:
    return f"band_{band:03d}"


def signature_schema(num_perm: int, bands: int) -> pa.Schema:
    return pa.schema([("row", pa.int64()), ("length", pa.int64()), ("sig", pa.list_(pa.uint32(), num_perm))]
                     + [(band_column(b), pa.uint64()) for b in range(bands)])


def image_signature_schema(bands: int) -> pa.Schema:
    """Image samples: each image's row, area (``length``: the representative's rank), pHash and chunk keys."""
    return pa.schema([("row", pa.int64()), ("length", pa.int64()), ("phash", pa.int64())]
                     + [(band_column(b), pa.uint64()) for b in range(bands)])


def sketch_partition(plan: Plan, part: int) -> dict[str, int]:
    """Exact keys into prefix files; signatures (documents with a shingle) and band keys into their files."""
    if (done := plan.done("sketch", part)) is not None:
        return done.stats
    if plan.images:
        return sketch_images(plan, part)
    cfg = plan.config
    keys, rows = [], []
    stats = {"documents": 0, "without_shingles": 0}
    schema = signature_schema(cfg.num_perm, cfg.bands)
    with contextlib.ExitStack() as stack:
        writer = None
        if cfg.fuzzy:  # no signatures file when fuzzy dedup is off
            tmp = stack.enter_context(storage.atomic_path(plan.signatures_url(part)))
            # Signatures and band keys are random bits: compressing them costs time and saves nothing.
            writer = stack.enter_context(pq.ParquetWriter(
                tmp, schema, compression={n: "zstd" if n in ("row", "length") else "none" for n in schema.names}))
        offset = 0
        for shard in plan.filtered[part].shards:
            for batch in iter_batches(shard.url, columns=["text"]):
                texts = batch.column("text")
                row = np.arange(offset, offset + len(texts), dtype=np.int64)
                offset += len(texts)
                if cfg.exact:
                    keys.append(exact.keys(texts))
                    rows.append(row)
                if writer is not None:
                    sig, has = minhash.signatures(texts, cfg.shingle_size, cfg.num_perm, cfg.seed)
                    stats["without_shingles"] += int((~has).sum())
                    lengths = pc.utf8_length(texts.fill_null("")).to_numpy(zero_copy_only=False)
                    sig = sig[has]
                    band = minhash.band_keys(sig, cfg.bands, cfg.rows)
                    columns = [pa.array(row[has]), pa.array(lengths[has].astype(np.int64)),
                               pa.FixedSizeListArray.from_arrays(pa.array(sig.reshape(-1), pa.uint32()),
                                                                 cfg.num_perm)]
                    writer.write_table(pa.Table.from_arrays(columns + list(band.T), schema=schema))
        if writer is not None:
            writer.close()  # before atomic_path moves the file into place
        stats["documents"] = offset
    if cfg.exact:
        exact.write_keys(plan, part, _stack(keys, (0, 2), np.uint64), _stack(rows, (0,), np.int64))
    plan.mark("sketch", part, stats)
    return stats


def _stack(parts: list[np.ndarray], empty_shape: tuple[int, ...], dtype) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(empty_shape, dtype)


def sketch_images(plan: Plan, part: int) -> dict[str, int]:
    """Image samples: exact keys from ``image_hash``; the pHash, the area and its chunk keys as the signatures."""
    cfg = plan.config
    keys, rows = [], []
    stats = {"documents": 0, "without_image_hash": 0, "without_phash": 0}
    schema = image_signature_schema(plan.bands)
    with contextlib.ExitStack() as stack:
        writer = None
        if cfg.fuzzy:
            tmp = stack.enter_context(storage.atomic_path(plan.signatures_url(part)))
            writer = stack.enter_context(pq.ParquetWriter(tmp, schema, compression="zstd"))
        offset = 0
        for shard in plan.filtered[part].shards:
            for batch in iter_batches(shard.url, columns=images.COLUMNS):
                row = np.arange(offset, offset + batch.num_rows, dtype=np.int64)
                offset += batch.num_rows
                if cfg.exact:
                    hashes = batch.column("image_hash")
                    has = images.exact_rows(hashes)
                    stats["without_image_hash"] += int((~has).sum())
                    keys.append(exact.keys(hashes)[has])
                    rows.append(row[has])
                if writer is not None:  # a sample without a pHash (none: ingest computes it) has no near copies
                    has = batch.column("phash").is_valid().to_numpy(zero_copy_only=False)
                    stats["without_phash"] += int((~has).sum())
                    phash = batch.column("phash").fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)[has]
                    area = images.area(batch.column("width"), batch.column("height"))[has]
                    band = images.band_keys(phash, cfg.image_distance)
                    columns = [pa.array(row[has]), pa.array(area), pa.array(phash)]
                    writer.write_table(pa.Table.from_arrays(columns + list(band.T), schema=schema))
        if writer is not None:
            writer.close()
        stats["documents"] = offset
    if cfg.exact:
        exact.write_keys(plan, part, _stack(keys, (0, 2), np.uint64), _stack(rows, (0,), np.int64))
    plan.mark("sketch", part, stats)
    return stats
