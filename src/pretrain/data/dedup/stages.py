"""The stage runner: the same stage functions the KFP fan-out calls, run in order in one process (or a pool).

plan -> sketch (per partition) -> buckets (per exact prefix shard and per LSH band) -> cluster (once)
-> remove (per partition) -> finish (the documents manifest, its stats, the ledger and cluster report).
"""

from __future__ import annotations

import collections
from typing import Any

from pretrain.config import Recipe, from_json
from pretrain.data import ledger
from pretrain.data.dedup import buckets, clusters, remove, sketch
from pretrain.data.dedup.plan import Plan, load_plan, make_plan
from pretrain.data.pool import Pool
from pretrain.manifest import Manifest, Shard, merge_stats, reuse


def bucket_groups(plan: Plan, groups: int) -> list[list[str]]:
    """The bucket units dealt round-robin into at most ``groups`` lists (one KFP task each)."""
    units = plan.bucket_units()
    n = max(1, min(groups, len(units)))
    return [units[i::n] for i in range(n)]  # [[]] when both kinds are off: one no-op task, never an empty loop


def sketch_one(recipe_json: str, part: int) -> dict[str, int]:
    return sketch.sketch_partition(load_plan(from_json(recipe_json)), int(part))


def buckets_some(recipe_json: str, units: list[str]) -> dict[str, int]:
    plan = load_plan(from_json(recipe_json))
    return merge_stats(buckets.run_unit(plan, u) for u in units)


def remove_one(recipe_json: str, part: int) -> dict[str, Any]:
    return remove.remove_partition(load_plan(from_json(recipe_json)), int(part))


def finish(plan: Plan) -> Manifest:
    """Assemble the deduplicated documents manifest from the per-partition results; save it."""
    results = [remove.remove_partition(plan, p) for p in plan.partitions]  # reused: already done
    per_source: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    shards = []
    for part, result in enumerate(results):
        per_source[plan.source(part)].update(result["stats"])
        shards.append(Shard(**result["shard"]))
    stats: dict[str, Any] = merge_stats(dict(c) for c in per_source.values())
    stats["by_source"] = {k: dict(v) for k, v in per_source.items()}
    report = clusters.load_report(plan) if plan.partitions else {"samples": []}
    texts = {(s["cluster"], s["member"]): s for r in results for s in r["samples"]}
    for i, sample in enumerate(report.get("samples", [])):
        for j, member in enumerate(sample["members"]):
            member.update(texts.get((i, j), {}))
            member.pop("cluster", None), member.pop("member", None)
    stats["clusters"] = {k: report.get(k, 0) for k in ("clusters", "exact_groups", "fuzzy_clusters",
                                                         "candidate_pairs", "verified_pairs")}
    result = Manifest(kind="documents", root=plan.root, fingerprint=plan.fingerprint, shards=shards, stats=stats,
                      config=plan.config.model_dump(),
                      extra={"filter_stats": merge_stats(m.stats for m in plan.filtered),
                             "ledger": ledger.build(plan.filtered, stats["by_source"]),
                             "clusters": {"size_histogram": report.get("size_histogram", {}),
                                          "samples": report.get("samples", [])}})
    result.save()
    return result


def dedup(recipe: Recipe, filtered: list[Manifest], workers: int = 1) -> Manifest:
    """Every stage in order, in this process (``workers`` > 1: partitions and bands in a process pool)."""
    plan = make_plan(recipe, filtered)
    if (done := reuse(plan.root, plan.fingerprint)) is not None:
        return done
    recipe_json = recipe.to_json()
    with Pool(workers) as run:
        run(sketch_one, [(recipe_json, p) for p in plan.partitions])
        run(buckets_some, [(recipe_json, g) for g in bucket_groups(plan, max(workers, 1))])
        clusters.cluster(plan)
        run(remove_one, [(recipe_json, p) for p in plan.partitions])
    return finish(plan)
