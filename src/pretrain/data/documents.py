"""The documents format: Parquet (zstd), one row per document. Loadable as is with
``datasets.load_dataset("parquet", data_files=...)``.

- ``id``: unique within the run and stable across re-runs; derived from the source name, the
  ``source_id`` and the text, so exact copies are still distinct documents for dedup to judge.
- ``text``: UTF-8 text (invalid bytes replaced by U+FFFD, counted in the ingest stats).
- ``source``: the recipe's source name. ``source_id``: the input's own identifier (WARC-Record-ID,
  wiki page id, repository path, the JSONL/Parquet id field, else file and line or row number).
- ``url``: the page URL, or the file's location for code and tables.
- ``date``: ISO 8601 (WARC-Date, revision timestamp, last commit date, the date field) or empty.
- ``license``: an SPDX id or empty. ``meta``: a JSON object of format-specific fields.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pretrain import storage
from pretrain.manifest import Shard

SCHEMA = pa.schema([
    ("id", pa.string()),
    ("text", pa.string()),
    ("source", pa.string()),
    ("source_id", pa.string()),
    ("url", pa.string()),
    ("date", pa.string()),
    ("license", pa.string()),
    ("meta", pa.string()),  # a JSON object as a string
])
# Dropped documents: the rule that dropped them (``reason``) and the value that tripped it (``value``).
DROPPED_SCHEMA = SCHEMA.append(pa.field("reason", pa.string())).append(pa.field("value", pa.string()))
# Image samples (image sources): a document whose ``text`` is the caption ("" when none), plus the stored image
# (decoded, resized so the shorter side is ``images.size``, re-encoded), its original size (the filter judges
# it), a class label ("" when none), the exact-duplicate key (xxh3-128 of the decoded pixels and size) and the
# 64-bit perceptual hash (imagehash.phash as a signed int64 bit pattern) for near-duplicates.
SAMPLE_SCHEMA = pa.schema([*SCHEMA, ("image", pa.binary()), ("width", pa.int32()), ("height", pa.int32()),
                           ("label", pa.string()), ("image_hash", pa.string()), ("phash", pa.int64())])
DROPPED_SAMPLE_SCHEMA = SAMPLE_SCHEMA.append(pa.field("reason", pa.string())).append(pa.field("value", pa.string()))
BATCH_ROWS = 1024


class ShardWriter:
    """Streams record batches into one Parquet shard, committed atomically on close."""

    def __init__(self, url: str, schema: pa.Schema = SCHEMA) -> None:
        self.url = url
        self.schema = schema
        self.rows = 0
        self._stack = contextlib.ExitStack()
        self._tmp = self._stack.enter_context(storage.atomic_path(url))
        self._writer = pq.ParquetWriter(self._tmp, schema, compression="zstd")
        self._pending: list[dict[str, Any]] = []

    def write_rows(self, rows: list[dict[str, Any]]) -> None:
        self._pending.extend(rows)
        if len(self._pending) >= BATCH_ROWS:
            self._flush()

    def write_table(self, table: pa.Table) -> None:
        self._flush()
        if table.num_rows:
            self._writer.write_table(table.select(self.schema.names).cast(self.schema))
            self.rows += table.num_rows

    def _flush(self) -> None:
        if self._pending:
            self._writer.write_table(pa.Table.from_pylist(self._pending, schema=self.schema))
            self.rows += len(self._pending)
            self._pending = []

    def close(self) -> Shard:
        self._flush()
        self._writer.close()
        size = os.path.getsize(self._tmp)
        checksum = _sha256_file(self._tmp)
        self._stack.close()  # commit: rename or upload
        return Shard(url=self.url, rows=self.rows, bytes=size, checksum=checksum)

    def abort(self) -> None:
        self._writer.close()
        self._stack.__exit__(RuntimeError, RuntimeError("aborted"), None)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def iter_batches(url: str, columns: list[str] | None = None, batch_size: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    """Stream a shard's record batches (a local path or an s3:// URL)."""
    fs, path = storage.filesystem(url)
    with fs.open(path, "rb") as f:
        pf = pq.ParquetFile(f)
        yield from pf.iter_batches(batch_size=batch_size, columns=columns)
