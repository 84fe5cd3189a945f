"""Stage 2, per LSH band (or exact prefix shard): documents with an equal band key become candidate pairs.

A band's keys are one column of each partition's signatures file (read alone); with ``band_shards`` > 1
a unit keeps only its key range (equal keys always fall in the same range), so it holds 1/band_shards of them.

A band's keys over the whole run are sorted; each run of equal keys is a bucket. Buckets of up to
``ALL_PAIRS_MAX`` documents give every pair (so verification can still join two copies when a third,
unrelated document shares their bucket); larger ones (mass copies) give a star to their first
document. The output has one row per candidate pair: it grows with the duplicates, not the corpus.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from pretrain.data.dedup import exact, tables
from pretrain.data.dedup.plan import Plan
from pretrain.data.dedup.sketch import BAND_SCHEMA, band_column

ALL_PAIRS_MAX = 16
PAIR_SCHEMA = pa.schema([("a_part", pa.int32()), ("a_row", pa.int64()), ("b_part", pa.int32()),
                         ("b_row", pa.int64())])


def band_pairs(plan: Plan, band: int, shard: int = 0) -> dict[str, int]:
    """Write the candidate pairs of one band's key range ``shard`` (of ``band_shards``): equal keys share one."""
    table = tables.concat([_band(plan, band, p, shard) for p in plan.partitions], BAND_SCHEMA)
    key, part, row = table["key"].to_numpy(), table["part"].to_numpy().astype(np.int32), table["row"].to_numpy()
    order = np.lexsort((row, part, key))
    key, part, row = key[order], part[order], row[order]
    new = np.ones(len(key), bool)
    new[1:] = key[1:] != key[:-1]
    starts = np.flatnonzero(new)
    sizes = np.diff(np.r_[starts, len(key)])
    a_idx, b_idx = [], []
    for size in np.unique(sizes[(sizes > 1) & (sizes <= ALL_PAIRS_MAX)]):
        first = starts[sizes == size]
        i, j = np.triu_indices(int(size), 1)
        a_idx.append((first[:, None] + i).ravel())
        b_idx.append((first[:, None] + j).ravel())
    big = sizes > ALL_PAIRS_MAX
    if big.any():
        first = np.repeat(starts[big], sizes[big] - 1)
        member = np.concatenate([np.arange(s + 1, s + n) for s, n in zip(starts[big], sizes[big], strict=True)])
        a_idx.append(first)
        b_idx.append(member)
    a = np.concatenate(a_idx) if a_idx else np.zeros(0, np.int64)
    b = np.concatenate(b_idx) if b_idx else np.zeros(0, np.int64)
    tables.write(pa.table({"a_part": part[a], "a_row": row[a], "b_part": part[b], "b_row": row[b]},
                          schema=PAIR_SCHEMA), plan.pairs_url(band, shard))
    return {"band_keys": len(key), "buckets": int((sizes > 1).sum()), "pairs": len(a)}


def _band(plan: Plan, band: int, part: int, shard: int) -> pa.Table:
    """One partition's keys of one band in key range ``shard``: one column of its signatures file (and the rows)."""
    table = tables.read(plan.signatures_url(part), columns=["row", band_column(band)])
    key, row = table[band_column(band)], table["row"]
    if plan.config.band_shards > 1:
        mine = exact.prefix_of(key.to_numpy(), plan.config.band_shards) == shard
        key, row = key.filter(pa.array(mine)), row.filter(pa.array(mine))
    return pa.table({"key": key, "part": pa.array(np.full(len(key), part, np.int32)), "row": row},
                    schema=BAND_SCHEMA)


def run_unit(plan: Plan, unit: str) -> dict[str, int]:
    """One bucket-stage unit, ``exact:<prefix>`` or ``band:<b>:<s>``; reused when already done."""
    if (done := plan.done("buckets", unit)) is not None:
        return done.stats
    kind, *index = unit.split(":")
    stats = exact.find_duplicates(plan, int(index[0])) if kind == "exact" else band_pairs(plan, *map(int, index))
    plan.mark("buckets", unit, stats)
    return stats
