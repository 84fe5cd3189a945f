"""Exact duplicates: a whitespace-normalized xxh3-128 key per document, sharded by key prefix.

Per partition the keys go into ``prefix_shards`` row groups of one file by their top bits, so the
bucket stage for one prefix reads only its share of the run's keys (one row group per partition);
no worker ever holds every hash. Within a prefix,
equal keys form a group whose first member in run order is kept (identical texts are equally long,
so both representative rules agree); the others are written as ``(part, row) -> (rep_part, rep_row)``.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from pretrain.data.dedup import tables
from pretrain.data.dedup.plan import Plan

KEY_SCHEMA = pa.schema([("h1", pa.uint64()), ("h2", pa.uint64()), ("part", pa.int32()), ("row", pa.int64())])
DUPS_SCHEMA = pa.schema([("part", pa.int32()), ("row", pa.int64()), ("rep_part", pa.int32()),
                         ("rep_row", pa.int64())])


def normalize(texts: pa.Array) -> pa.Array:
    """Whitespace runs (Unicode whitespace: ASCII, Zs, Zl, Zp, NEL) become one space; ends trimmed; null -> "".

    Arrow's split-and-join: twice as fast as a regex replace, and no copy to Python strings.
    """
    return pc.binary_join(pc.utf8_split_whitespace(pc.utf8_trim_whitespace(texts.fill_null(""))), " ")


def keys(texts: pa.Array) -> np.ndarray:
    """(n, 2) uint64: the xxh3-128 digest of each normalized text, hashed straight from Arrow's buffer."""
    norm = normalize(texts)
    if isinstance(norm, pa.ChunkedArray):
        norm = norm.combine_chunks()
    out = np.empty((len(norm), 2), dtype=np.uint64)
    if not len(norm):
        return out
    offsets = np.frombuffer(norm.buffers()[1], np.int32)[norm.offset:norm.offset + len(norm) + 1].tolist()
    data = memoryview(norm.buffers()[2] or b"")
    digest = xxhash.xxh3_128_intdigest
    for i in range(len(norm)):
        d = digest(data[offsets[i]:offsets[i + 1]])
        out[i, 0], out[i, 1] = d >> 64, d & 0xFFFFFFFFFFFFFFFF
    return out


def text_key(text: str) -> bytes:
    """The 16-byte exact key of one text (the same key :func:`keys` computes for a batch)."""
    hi, lo = (int(x) for x in keys(pa.array([text]))[0])
    return hi.to_bytes(8, "big") + lo.to_bytes(8, "big")


def prefix_of(h1: np.ndarray, shards: int) -> np.ndarray:
    """The prefix shard of each key: its top bits, scaled to ``shards`` (uniform, any shard count)."""
    return ((h1 >> np.uint64(32)) * np.uint64(shards) >> np.uint64(32)).astype(np.int64)


def write_keys(plan: Plan, part: int, key: np.ndarray, rows: np.ndarray) -> list[int]:
    """Write one partition's keys, one row group per prefix shard (empty ones too); rows per shard."""
    shards = plan.config.prefix_shards
    prefix = prefix_of(key[:, 0], shards)
    order = np.argsort(prefix, kind="stable")
    bounds = np.searchsorted(prefix[order], np.arange(shards + 1))
    groups = []
    for k in range(shards):
        idx = order[bounds[k]:bounds[k + 1]]
        groups.append(pa.table({"h1": key[idx, 0], "h2": key[idx, 1], "part": np.full(len(idx), part, np.int32),
                                "row": rows[idx]}, schema=KEY_SCHEMA))
    tables.write_groups(groups, KEY_SCHEMA, plan.exact_url(part))
    return [g.num_rows for g in groups]


def find_duplicates(plan: Plan, prefix: int) -> dict[str, int]:
    """One prefix shard: group equal keys over every partition, write each non-first member with its rep."""
    shards = plan.config.prefix_shards
    table = tables.concat([tables.read_group(plan.exact_url(p), prefix, shards) for p in plan.partitions],
                          KEY_SCHEMA)
    h1, h2 = table["h1"].to_numpy(), table["h2"].to_numpy()
    part, row = table["part"].to_numpy().astype(np.int32), table["row"].to_numpy()
    order = np.lexsort((row, part, h2, h1))  # run order within each key group
    h1, h2, part, row = h1[order], h2[order], part[order], row[order]
    same = np.zeros(len(order), dtype=bool)
    same[1:] = (h1[1:] == h1[:-1]) & (h2[1:] == h2[:-1])
    group_start = np.maximum.accumulate(np.where(same, 0, np.arange(len(order))))
    dup = np.flatnonzero(same)
    rep = group_start[dup]
    out = pa.table({"part": part[dup], "row": row[dup], "rep_part": part[rep], "rep_row": row[rep]},
                   schema=DUPS_SCHEMA)
    tables.write(out, plan.exact_dups_url(prefix))
    return {"keys": len(order), "duplicates": len(dup)}


def load_duplicates(plan: Plan) -> pa.Table:
    """Every exact duplicate with its representative (as many rows as duplicates, not documents)."""
    if not plan.config.exact:
        return DUPS_SCHEMA.empty_table()
    return tables.concat([tables.read(plan.exact_dups_url(k)) for k in range(plan.config.prefix_shards)], DUPS_SCHEMA)
