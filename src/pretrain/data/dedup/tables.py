"""Reading and writing the small intermediate Parquet tables of the dedup stages (local path or s3://)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from pretrain import storage


def write(table: pa.Table, url: str) -> None:
    """Write ``table`` to ``url`` atomically (a reader never sees half a file)."""
    with storage.atomic_path(url) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read(url: str, columns: list[str] | None = None) -> pa.Table:
    if not storage.is_remote(url):
        return pq.read_table(url, columns=columns)
    fs, path = storage.filesystem(url)
    with fs.open(path, "rb") as f:
        return pq.read_table(f, columns=columns)


def concat(tables: list[pa.Table], schema: pa.Schema) -> pa.Table:
    return pa.concat_tables([t.cast(schema) for t in tables]) if tables else schema.empty_table()
