"""Reading and writing the small intermediate Parquet tables of the dedup stages (local path or s3://)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from pretrain import storage


def write(table: pa.Table, url: str) -> None:
    """Write ``table`` to ``url`` atomically (a reader never sees half a file)."""
    with storage.atomic_path(url) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def write_groups(groups: list[pa.Table], schema: pa.Schema, url: str) -> None:
    """Write one row group per table (empty ones too), so a reader can take group ``i`` alone."""
    with storage.atomic_path(url) as tmp, pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        for table in groups:
            writer.write_table(table.cast(schema), row_group_size=max(1, table.num_rows))


def read(url: str, columns: list[str] | None = None) -> pa.Table:
    if not storage.is_remote(url):
        return pq.read_table(url, columns=columns)
    fs, path = storage.filesystem(url)
    with fs.open(path, "rb") as f:
        return pq.read_table(f, columns=columns)


def read_group(url: str, index: int, groups: int, columns: list[str] | None = None) -> pa.Table:
    """Row group ``index`` of a file written by :func:`write_groups` with ``groups`` groups."""
    if storage.is_remote(url):
        fs, path = storage.filesystem(url)
        with fs.open(path, "rb") as f:
            return _group(pq.ParquetFile(f), url, index, groups, columns)
    return _group(pq.ParquetFile(url), url, index, groups, columns)


def _group(file: pq.ParquetFile, url: str, index: int, groups: int, columns: list[str] | None) -> pa.Table:
    if file.num_row_groups != groups:
        raise RuntimeError(f"{url} has {file.num_row_groups} row groups, expected {groups}: rerun its stage")
    return file.read_row_group(index, columns=columns)


def concat(tables: list[pa.Table], schema: pa.Schema) -> pa.Table:
    return pa.concat_tables([t.cast(schema) for t in tables]) if tables else schema.empty_table()
