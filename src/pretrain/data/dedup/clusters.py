"""Stage 3, once per run: candidate pairs -> verified pairs -> connected components -> what each partition drops.

Holds only what grows with the duplicates: the exact duplicates, the candidate pairs, and the
signatures and lengths of the documents that appear in a pair (read partition by partition, keeping
only those rows). Exact copies are first folded onto their exact representative; pairs whose
estimated Jaccard (over all ``num_perm`` values) is below ``threshold`` are dropped when ``verify``
is on (image samples: pairs whose pHashes differ in more than ``image_distance`` bits, always);
components come from label propagation with pointer jumping over the pairs (vectorized union-find).
Each component keeps one representative by the recipe's rule:

- ``longest``: the most characters (image samples: the largest original image, width * height); ties go to the
  earliest.
- ``earliest``: the first in run order (sources by name, partitions by key, rows in shard order).

Exact groups always keep their earliest copy (identical texts are equally long).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa

from pretrain import storage
from pretrain.data.dedup import exact, images, minhash, tables
from pretrain.data.dedup.buckets import PAIR_SCHEMA
from pretrain.data.dedup.plan import Plan

ROW_BITS = 40  # a document's id: part << 40 | row
REMOVAL_SCHEMA = pa.schema([("row", pa.int64()), ("kind", pa.string()), ("rep_part", pa.int32()),
                            ("rep_row", pa.int64())])
SAMPLE_CLUSTERS = 5
SAMPLE_MEMBERS = 5


def ids(part: np.ndarray, row: np.ndarray) -> np.ndarray:
    return (part.astype(np.int64) << ROW_BITS) | row.astype(np.int64)


def split_ids(node: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return (node >> ROW_BITS).astype(np.int32), node & ((1 << ROW_BITS) - 1)


def components(n: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The component label (its smallest member index) of nodes ``0..n-1`` joined by edges ``u-v``."""
    label = np.arange(n)
    while True:
        new = label.copy()
        low = np.minimum(label[u], label[v])
        np.minimum.at(new, u, low)
        np.minimum.at(new, v, low)
        while not np.array_equal(jumped := new[new], new):
            new = jumped
        if np.array_equal(new, label):
            return label
        label = new


def _canonical(node: np.ndarray, dup_sorted: np.ndarray, rep_of_sorted: np.ndarray) -> np.ndarray:
    """Replace exact duplicates by their exact representative."""
    if not len(dup_sorted):
        return node
    at = np.clip(np.searchsorted(dup_sorted, node), 0, len(dup_sorted) - 1)
    return np.where(dup_sorted[at] == node, rep_of_sorted[at], node)


def _load_pairs(plan: Plan) -> tuple[np.ndarray, np.ndarray]:
    if not plan.config.fuzzy:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    pairs = tables.concat([tables.read(plan.pairs_url(b, s)) for b in range(plan.bands)
                           for s in range(plan.config.band_shards)], PAIR_SCHEMA)
    return (ids(pairs["a_part"].to_numpy(), pairs["a_row"].to_numpy()),
            ids(pairs["b_part"].to_numpy(), pairs["b_row"].to_numpy()))


def _load_signatures(plan: Plan, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Signatures (images: pHashes) and lengths (images: areas) of ``nodes`` (sorted ids), a partition at a time."""
    column = "phash" if plan.images else "sig"
    sig = np.zeros(len(nodes), np.int64) if plan.images else np.zeros((len(nodes), plan.config.num_perm), np.uint32)
    length = np.zeros(len(nodes), np.int64)
    part_of = nodes >> ROW_BITS
    for part in np.unique(part_of):
        table = tables.read(plan.signatures_url(int(part)), columns=["row", "length", column])
        rows = table["row"].to_numpy()
        want = nodes[part_of == part] & ((1 << ROW_BITS) - 1)
        take = np.flatnonzero(np.isin(rows, want))
        at = np.searchsorted(nodes, ids(np.full(len(take), part), rows[take]))
        if plan.images:
            sig[at] = table["phash"].to_numpy()[take]
        else:
            sig[at] = table["sig"].combine_chunks().flatten().to_numpy().reshape(-1, plan.config.num_perm)[take]
        length[at] = table["length"].to_numpy()[take]
    return sig, length


def cluster(plan: Plan) -> dict[str, Any]:
    """Decide every removal; write one removals file per partition and the cluster report."""
    if (done := plan.done("cluster")) is not None:
        return done.stats
    cfg = plan.config
    dups = exact.load_duplicates(plan)
    dup = ids(dups["part"].to_numpy(), dups["row"].to_numpy())
    dup_rep = ids(dups["rep_part"].to_numpy(), dups["rep_row"].to_numpy())
    order = np.argsort(dup)
    dup, dup_rep = dup[order], dup_rep[order]

    a, b = _load_pairs(plan)
    candidate_pairs = len(a)
    a, b = _canonical(a, dup, dup_rep), _canonical(b, dup, dup_rep)
    keep = a != b
    lo, hi = np.minimum(a[keep], b[keep]), np.maximum(a[keep], b[keep])
    pair = np.unique(np.stack([lo, hi], axis=1), axis=0) if len(lo) else np.zeros((0, 2), np.int64)
    nodes = np.unique(pair)
    sig, length = _load_signatures(plan, nodes)
    u, v = np.searchsorted(nodes, pair[:, 0]), np.searchsorted(nodes, pair[:, 1])
    if plan.images:  # a shared pHash chunk is only a candidate: always keep the pairs within the distance
        ok = images.hamming(sig[u], sig[v]) <= cfg.image_distance
        u, v = u[ok], v[ok]
    else:
        similarity = minhash.jaccard(sig[u], sig[v])
        if cfg.verify:
            ok = similarity >= cfg.threshold
            u, v, similarity = u[ok], v[ok], similarity[ok]

    label = components(len(nodes), u, v)
    linked = np.zeros(len(nodes), bool)
    linked[u] = linked[v] = True
    rank = (nodes,) if cfg.representative == "earliest" else (nodes, -length)
    first = np.lexsort((*rank, label))
    is_first = np.ones(len(first), bool)
    is_first[1:] = label[first][1:] != label[first][:-1]
    rep_index = np.empty(len(nodes), np.int64)
    rep_index[label[first][is_first]] = first[is_first]
    node_rep = nodes[rep_index[label]]
    fuzzy = linked & (node_rep != nodes)
    fuzzy_node, fuzzy_rep = nodes[fuzzy], node_rep[fuzzy]

    # The final keeper of each exact duplicate: its exact representative, or that one's fuzzy keeper.
    exact_final = _canonical(dup_rep, fuzzy_node, fuzzy_rep)
    removed = np.concatenate([dup, fuzzy_node])
    kind = np.array(["exact"] * len(dup) + ["fuzzy"] * len(fuzzy_node), dtype=object)
    keeper = np.concatenate([exact_final, fuzzy_rep])
    order = np.argsort(removed, kind="stable")
    removed, kind, keeper = removed[order], kind[order], keeper[order]
    part_of = removed >> ROW_BITS
    bounds = np.searchsorted(part_of, np.arange(len(plan.filtered) + 1))
    for p in plan.partitions:
        s = slice(bounds[p], bounds[p + 1])
        rep_part, rep_row = split_ids(keeper[s])
        tables.write(pa.table({"row": removed[s] & ((1 << ROW_BITS) - 1), "kind": pa.array(kind[s], pa.string()),
                               "rep_part": rep_part, "rep_row": rep_row}, schema=REMOVAL_SCHEMA),
                     plan.removals_url(p))

    report = _report(removed, kind, keeper)
    stats = {"exact_removed": len(dup), "fuzzy_removed": len(fuzzy_node), "candidate_pairs": candidate_pairs,
             "distinct_pairs": len(pair), "verified_pairs": len(u), "pair_documents": len(nodes),
             "signatures_loaded": len(sig), "clusters": report["clusters"],
             "exact_groups": len(np.unique(dup_rep)), "fuzzy_clusters": len(np.unique(label[linked]))}
    report.update(stats)
    storage.write_json(plan.url("clusters", "report.json"), report)
    plan.mark("cluster", stats=stats)
    return stats


def _report(removed: np.ndarray, kind: np.ndarray, keeper: np.ndarray) -> dict[str, Any]:
    """Cluster counts, a size histogram, and the members of a few sample clusters (texts filled in later)."""
    reps, inverse, counts = np.unique(keeper, return_inverse=True, return_counts=True)
    sizes = counts + 1
    histogram: dict[str, int] = {}
    for size in sizes.tolist():
        top = 1 << (size - 1).bit_length()  # sizes 5-8, 9-16, ... share a bin
        label = str(size) if size <= 4 else f"{top // 2 + 1}-{top}"
        histogram[label] = histogram.get(label, 0) + 1
    has_fuzzy = np.zeros(len(reps), bool)
    has_fuzzy[inverse[kind == "fuzzy"]] = True
    ranked = sorted(range(len(reps)), key=lambda i: (not has_fuzzy[i], -int(sizes[i]), int(reps[i])))
    samples = []
    for i in ranked[:SAMPLE_CLUSTERS]:
        members = np.flatnonzero(inverse == i)[: SAMPLE_MEMBERS - 1]
        rows = [(int(reps[i]), "kept")] + [(int(removed[m]), str(kind[m])) for m in members]
        samples.append({"size": int(sizes[i]), "members": [
            {"part": node >> ROW_BITS, "row": node & ((1 << ROW_BITS) - 1), "role": role} for node, role in rows]})
    return {"clusters": len(reps), "size_histogram": histogram, "samples": samples}


def load_report(plan: Plan) -> dict[str, Any]:
    return json.loads(storage.read_text(plan.url("clusters", "report.json")))
