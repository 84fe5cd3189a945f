"""What the data steps did to the data, read back from the manifests they wrote: the report's and the card's facts.

``collect(recipe)`` reads the plan, the filter manifests (through dedup's ``plan.json``, which lists the ones dedup
used), the dedup and tokens manifests and the train manifest under the run root; it reads no document text
except one sample per filter rule (the first document it dropped, in run order) and the ``license`` column of
the deduplicated shards. A step that has not run leaves its parts empty or None, never guessed.

An image run's tokenize step writes a samples manifest (``kind="samples"``: per source ``train_samples`` and
``val_samples``) instead of token shards: its sources count samples, its funnel ends "in sample shards", and
``samples`` holds the split's counts (with the samples dropped for having no caption) and the stored image size.

The knowledge cutoff is the latest date of a document in the train split of the token shards: dropped,
duplicate and validation documents do not count, and undated ones are counted apart. The tokenize step records
these dates per source and split (``extra["dates"]``); for a tokens manifest written before it did, the dates
are read from the deduplicated shards and split by the same rule (a hash of the document id).
"""

from __future__ import annotations

import collections
from typing import Any

from pretrain.config import Recipe
from pretrain.data.documents import iter_batches
from pretrain.data.readers.base import Partition
from pretrain.data.tokenize import DateStats, is_validation
from pretrain.manifest import Manifest, merge_stats

SAMPLE_CHARS = 300  # a dropped document's text in a drop sample
MEMBER_CHARS = 200  # a duplicate cluster member's text
CLUSTERS = 5  # the largest few duplicate clusters
BASIS = "latest document date in the train split"
OTHER_RULES = ("language", "urls", "licenses")  # dropped for what they are, not for quality or toxicity


def category(rule: str) -> str:
    """A filter rule's curation category: ``toxic``, ``other_dropped`` (language, blocked URLs, licences) or
    ``low_quality`` (length, repetition, quality, gibberish, code rules)."""
    family = rule.split(".", 1)[0]
    if family == "toxic":
        return "toxic"
    return "other_dropped" if family in OTHER_RULES else "low_quality"


def _load(url: str) -> Manifest | None:
    try:
        return Manifest.load(url)
    except FileNotFoundError:
        return None


def filtered_manifests(recipe: Recipe) -> list[Manifest]:
    """The filter manifests dedup used (its ``plan.json``), else those of the plan's partitions that exist."""
    from pretrain.data.dedup.plan import load_plan

    try:
        return load_plan(recipe).filtered
    except FileNotFoundError:
        pass
    plan = _load(recipe.url("plan"))
    out = []
    for p in (Partition.from_dict(d) for d in (plan.extra.get("partitions", []) if plan else [])):
        found = _load(recipe.url("filtered", "kept", p.source, f"{p.shard_name}.manifest.json"))
        if found is not None:
            out.append(found)
    return out


def _source(m: Manifest) -> str:
    return m.extra["partition"]["source"]


def _per_source(filtered: list[Manifest]) -> dict[str, dict[str, Any]]:
    """Filter stats (and the ingest stats they carry) added up per source."""
    out: dict[str, dict[str, Any]] = {}
    for m in filtered:
        row = {"filter": m.stats, "ingest": m.extra.get("ingest_stats", {}), "profile": m.extra.get("profile")}
        prev = out.get(_source(m), {"filter": {}, "ingest": {}})
        out[_source(m)] = {"filter": merge_stats([prev["filter"], row["filter"]]),
                           "ingest": merge_stats([prev["ingest"], row["ingest"]]), "profile": row["profile"]}
    return out


def _kept_bytes(stats: dict[str, Any]) -> int | None:
    """UTF-8 bytes of the kept documents after rewriting, when the stats determine it: the filter counts bytes
    in, bytes of dropped documents (as read) and bytes cut by rewrites (of kept and later dropped ones alike)."""
    if "bytes_kept" in stats:
        return int(stats["bytes_kept"])
    if "bytes_in" not in stats:
        return None
    dropped = sum(stats.get("bytes_dropped_by_reason", {}).values())
    if any(stats.get("bytes_removed_by_transform", {}).values()):
        return None  # a rewrite before a dropping rule is counted in both: the difference would be wrong
    return int(stats["bytes_in"]) - int(dropped)


def funnel(names: list[str], per_source: dict[str, dict[str, Any]], dedup: Manifest | None,
           tokens: Manifest | None) -> list[dict[str, Any]]:
    """Documents and bytes of each source at each stage that has run (bytes None where no step counted them)."""
    stages: list[dict[str, Any]] = []

    def stage(name: str, rows: dict[str, dict[str, int | None]]) -> None:
        stages.append({"stage": name, "by_source": {s: rows[s] for s in names if s in rows}})

    if per_source:
        stage("read", {s: {"documents": int(r["ingest"].get("records", 0)),
                           "bytes": r["ingest"].get("bytes_read")} for s, r in per_source.items()})
        stage("ingested", {s: {"documents": int(r["ingest"].get("documents", r["filter"].get("documents_in", 0))),
                               "bytes": r["filter"].get("bytes_in")} for s, r in per_source.items()})
        stage("kept by filters", {s: {"documents": int(r["filter"].get("kept", 0)), "bytes": _kept_bytes(r["filter"])}
                                  for s, r in per_source.items()})
    token_rows = (tokens.stats.get("by_source") or {}) if tokens else {}
    if tokens is not None and tokens.kind == "samples":
        in_tokens = {s: {"documents": int(r.get("train_samples", 0)) + int(r.get("val_samples", 0)),
                         "bytes": int(r["train_bytes"]) + int(r.get("val_bytes", 0)) if "train_bytes" in r else None}
                     for s, r in token_rows.items()}
    else:
        in_tokens = {s: {"documents": int(r.get("train_documents", 0)) + int(r.get("val_documents", 0)),
                         "bytes": int(r.get("train_bytes", 0)) + int(r.get("val_bytes", 0))}
                     for s, r in token_rows.items()}
    if dedup is not None:
        rows = {}
        for s, r in (dedup.stats.get("by_source") or {}).items():
            docs = int(r.get("documents_out", 0))
            same = s in in_tokens and in_tokens[s]["documents"] == docs  # tokenize encodes every deduplicated text
            rows[s] = {"documents": docs, "bytes": in_tokens[s]["bytes"] if same else None}
        stage("after dedup", rows)
    if in_tokens:
        stage("in sample shards" if tokens is not None and tokens.kind == "samples" else "in token shards", in_tokens)
    return stages


def drops(filtered: list[Manifest]) -> dict[str, dict[str, Any]]:
    """Per filter rule: documents and bytes it dropped, per source, and the first document it dropped."""
    out: dict[str, dict[str, Any]] = {}
    for m in filtered:
        for rule, n in m.stats.get("dropped_by_reason", {}).items():
            row = out.setdefault(rule, {"documents": 0, "bytes": 0, "by_source": {}, "sample": None})
            row["documents"] += int(n)
            row["bytes"] += int(m.stats.get("bytes_dropped_by_reason", {}).get(rule, 0))
            row["by_source"][_source(m)] = row["by_source"].get(_source(m), 0) + int(n)
    for m in filtered:  # in run order; stop reading as soon as every rule has its sample
        wanted = {r for r in m.stats.get("dropped_by_reason", {}) if out[r]["sample"] is None}
        for shard in m.extra.get("dropped", []) if wanted else []:
            for batch in iter_batches(shard["url"], columns=["id", "source", "reason", "value", "text"]):
                for row in batch.to_pylist():
                    if row["reason"] in wanted:
                        out[row["reason"]]["sample"] = {"source": row["source"], "id": row["id"],
                                                        "value": row["value"],
                                                        "text": (row["text"] or "")[:SAMPLE_CHARS]}
                        wanted.discard(row["reason"])
                if not wanted:
                    break
            if not wanted:
                break
    return dict(sorted(out.items(), key=lambda kv: (-kv[1]["documents"], kv[0])))


def duplicate_clusters(dedup: Manifest | None) -> list[dict[str, Any]]:
    """The largest sample clusters dedup reported, each member with its role (kept, exact, fuzzy)."""
    samples = ((dedup.extra.get("clusters") or {}).get("samples") or []) if dedup else []
    ranked = sorted(samples, key=lambda c: -int(c.get("size", len(c.get("members", [])))))[:CLUSTERS]
    return [{"size": int(c.get("size", len(c["members"]))),
             "members": [{"source": m.get("source"), "id": m.get("id"), "role": m.get("role"), "url": m.get("url"),
                          "text": (m.get("text") or "")[:MEMBER_CHARS]} for m in c.get("members", [])]}
            for c in ranked]


def curation(names: list[str], per_source: dict[str, dict[str, Any]], dedup: Manifest | None) -> dict[str, Any]:
    """Per source: the share of its ingested documents removed as toxic, low quality, duplicate or other, and the
    PII redactions by kind (in kept documents)."""
    dup = (dedup.stats.get("by_source") or {}) if dedup else {}
    out: dict[str, Any] = {}
    for s in (n for n in names if n in per_source):
        stats = per_source[s]["filter"]
        docs = int(stats.get("documents_in", 0))
        counts = collections.Counter({"toxic": 0, "low_quality": 0, "other_dropped": 0})
        for rule, n in stats.get("dropped_by_reason", {}).items():
            counts[category(rule)] += int(n)
        counts["duplicate"] = int(dup.get(s, {}).get("duplicates", 0))
        out[s] = {"documents_in": docs, **{k: (v / docs if docs else 0.0) for k, v in counts.items()},
                  "removed": dict(counts), "pii_redactions": dict(stats.get("pii_redacted", {}))}
    return out


def _document_facts(dedup: Manifest | None, want_dates: bool, val_fraction: float, seed: int
                    ) -> tuple[dict[str, collections.Counter], dict[str, dict[str, DateStats]]]:
    """Licences per source of the deduplicated documents, and (``want_dates``) their dates per split."""
    licenses: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    dates: dict[str, dict[str, DateStats]] = {}
    for shard in dedup.shards if dedup else []:
        columns = ["source", "license", *(["id", "date"] if want_dates else [])]
        for batch in iter_batches(shard.url, columns=columns):
            table = batch.to_pydict()
            for i, (source, lic) in enumerate(zip(table["source"], table["license"], strict=True)):
                licenses[source][lic or ""] += 1
                if want_dates:
                    split = "val" if is_validation(table["id"][i], val_fraction, seed) else "train"
                    dates.setdefault(source, {"train": DateStats(), "val": DateStats()})[split].add(table["date"][i])
    return licenses, dates


def knowledge_dates(names: list[str], tokens: Manifest | None, fallback: dict[str, dict[str, DateStats]]
                    ) -> dict[str, Any]:
    """The knowledge cutoff (the latest train-split date) and the date distribution per source and split."""
    recorded = tokens.extra.get("dates") if tokens else None
    if recorded is not None:
        splits = {s: {k: DateStats.from_dict(v) for k, v in row.items()} for s, row in recorded.items()}
        how = "tokens manifest"
    else:
        splits, how = fallback, "deduplicated documents, split by document id"
    order = [n for n in names if n in splits] + sorted(set(splits) - set(names))
    train = {s: splits[s].get("train", DateStats()).as_dict() for s in order}
    latest = [row["latest"] for row in train.values() if row["latest"]]
    return {"knowledge_cutoff": max(latest) if latest else None, "basis": BASIS,
            "counted_from": how if splits else None, "by_source": train,
            "val_by_source": {s: splits[s].get("val", DateStats()).as_dict() for s in order}}


def sample_facts(samples: Manifest) -> dict[str, Any]:
    """The samples manifest's headline counts: the split, samples dropped for having no caption, the labels and
    the stored image size."""
    stats, extra = samples.stats, samples.extra
    return {"train_samples": stats.get("train_samples"), "val_samples": stats.get("val_samples"),
            "no_caption": stats.get("no_caption"), "labels": len(extra.get("labels") or []),
            "image_size": extra.get("image_size"), "modality": extra.get("modality")}


def collect(recipe: Recipe) -> dict[str, Any]:
    """The data facts of the run under ``recipe``'s run root (the schema is in the evaluate step's docs)."""
    filtered = filtered_manifests(recipe)
    dedup, tokens = _load(recipe.url("dedup")), _load(recipe.url("tokens"))
    checkpoints = _load(recipe.url("train"))
    per_source = _per_source(filtered)
    token_rows = (tokens.stats.get("by_source") or {}) if tokens else {}
    names = [s.name for s in recipe.sources]
    names += sorted((set(per_source) | set(token_rows)) - set(names))
    want_dates = tokens is not None and "dates" not in tokens.extra
    split = (tokens.config.get("split") or {}) if tokens else {}
    licenses, fallback = _document_facts(dedup, want_dates, float(split.get("val_fraction",
                                                                            recipe.split.val_fraction)), recipe.seed)
    sources = {}
    samples = tokens is not None and tokens.kind == "samples"
    for s in (n for n in names if n in token_rows or n in licenses):
        r = token_rows.get(s)  # None: a tokens manifest without per-source counts (older code) or none yet
        if samples:  # an image run: samples per split, no tokens
            counts = {k: (int(r.get(k, 0)) if r is not None else None) for k in ("train_samples", "val_samples")}
            total = (counts["train_samples"] + counts["val_samples"] if r is not None
                     else sum(licenses.get(s, {}).values()))
            sources[s] = {"documents": total, "samples": total, **counts, "licenses": dict(licenses.get(s, {}))}
            continue
        counts = {k: (int(r.get(k, 0)) if r is not None else None)
                  for k in ("train_documents", "val_documents", "train_tokens", "val_tokens")}
        documents = counts["train_documents"] + counts["val_documents"] if r is not None else \
            sum(licenses.get(s, {}).values())  # every deduplicated document reaches the token shards
        sources[s] = {"documents": documents, **counts, "licenses": dict(licenses.get(s, {}))}
    dedup_rows = (dedup.stats.get("by_source") or {}) if dedup else {}
    extra = {"samples": sample_facts(tokens)} if samples else {}
    return {
        "sources": sources,
        "funnel": funnel(names, per_source, dedup, tokens),
        "drops": drops(filtered),
        "duplicate_clusters": duplicate_clusters(dedup),
        "dedup": {"config": dedup.config if dedup else None,
                  "by_source": {s: {"documents_in": int(r.get("documents_in", 0)),
                                    "exact": int(r.get("exact_duplicates", 0)),
                                    "fuzzy": int(r.get("fuzzy_duplicates", 0)),
                                    "documents_out": int(r.get("documents_out", 0))}
                                for s, r in dedup_rows.items()}},
        "filters": {"profiles": {s: r.get("profile") for s, r in per_source.items()},
                    "rules_missing": sorted({x for m in filtered for x in m.extra.get("rules_missing", [])})},
        "mixture": tokens.extra.get("mixture") if tokens else None,
        "trained_tokens_by_source": (checkpoints.extra.get("trained_tokens_by_source") or None) if checkpoints
        else None,
        "curation": curation(names, per_source, dedup),
        "dates": knowledge_dates(names, tokens, fallback),
        **extra,
    }

