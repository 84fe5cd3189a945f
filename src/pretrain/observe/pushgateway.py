"""Data-step metrics pushed to a Prometheus Pushgateway: data steps are batch work with nothing to scrape.

After a step finishes, its counts (documents and bytes in and out, dropped per rule, duplicates, tokens) are
pushed under the grouping key ``job=pretrain, run=<run>, step=<step>``, one group per step (a push replaces its
group, so a retried step never counts twice), and every group of the run is deleted at the end of the run.
Counts are read from the steps' manifests, so whatever runs a step (the CLI, a notebook, a KFP component)
pushes the same numbers. An unreachable Pushgateway gets one warning and the step goes on.
"""

from __future__ import annotations

import urllib.error
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.exposition import delete_from_gateway, push_to_gateway

from pretrain.observe import warn

JOB = "pretrain"
DATA_STEPS = ("filter", "dedup", "tokenize")  # the groups a run pushes (and deletes)
LABELS = ("run", "step")
TIMEOUT_SECONDS = 5.0
# name -> (help, extra label or None)
COUNTERS: dict[str, tuple[str, str | None]] = {
    "pretrain_data_documents_in": ("Documents the step read.", None),
    "pretrain_data_documents_out": ("Documents the step wrote.", None),
    "pretrain_data_bytes_in": ("Bytes of document text the step read.", None),
    "pretrain_data_bytes_out": ("Bytes of document text (tokenize: of token ids) the step wrote.", None),
    "pretrain_data_dropped_documents": ("Documents dropped, by the rule that dropped them.", "rule"),
    "pretrain_data_dropped_bytes": ("Bytes of text dropped, by the rule that dropped them.", "rule"),
    "pretrain_data_duplicate_documents": ("Documents removed as duplicates, by kind (exact, fuzzy).", "kind"),
    "pretrain_data_tokens": ("Tokens written, by split (train, val).", "split"),
}


def _sum(rows: Iterable[dict[str, Any]], key: str) -> float:
    return float(sum(r.get(key) or 0 for r in rows))


def _merge(rows: Iterable[dict[str, Any]], key: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for row in rows:
        for name, value in (row.get(key) or {}).items():
            out[name] = out.get(name, 0.0) + float(value)
    return out


def step_counts(step: str, stats: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """A step's counts from its manifests' stats (one per partition): metric -> {extra label value or "": n}."""
    if step == "filter":
        return {"pretrain_data_documents_in": {"": _sum(stats, "documents_in")},
                "pretrain_data_documents_out": {"": _sum(stats, "kept")},
                "pretrain_data_bytes_in": {"": _sum(stats, "bytes_in")},
                "pretrain_data_dropped_documents": _merge(stats, "dropped_by_reason"),
                "pretrain_data_dropped_bytes": _merge(stats, "bytes_dropped_by_reason")}
    if step == "dedup":
        return {"pretrain_data_documents_in": {"": _sum(stats, "documents_in")},
                "pretrain_data_documents_out": {"": _sum(stats, "documents_out")},
                "pretrain_data_duplicate_documents": {"exact": _sum(stats, "exact_duplicates"),
                                                      "fuzzy": _sum(stats, "fuzzy_duplicates")}}
    if step == "tokenize":
        splits = ("train", "val")
        return {"pretrain_data_documents_in": {"": sum(_sum(stats, f"{s}_documents") for s in splits)},
                "pretrain_data_bytes_out": {"": sum(_sum(stats, f"{s}_bytes") for s in splits)},
                "pretrain_data_tokens": {s: _sum(stats, f"{s}_tokens") for s in splits}}
    raise ValueError(f"unknown data step {step!r}; known: {', '.join(DATA_STEPS)}")


def step_registry(run: str, step: str, counts: dict[str, dict[str, float]]) -> CollectorRegistry:
    """A fresh registry holding one step's counts, labelled with the run and the step."""
    registry = CollectorRegistry(auto_describe=True)
    for name, values in counts.items():
        doc, extra = COUNTERS[name]
        counter = Counter(name, doc, (*LABELS, extra) if extra else LABELS, registry=registry)
        for label, value in values.items():
            (counter.labels(run, step, label) if extra else counter.labels(run, step)).inc(value)
    return registry


def grouping_key(run: str, step: str) -> dict[str, str]:
    return {"run": run, "step": step}


def push_step(gateway: str | None, run: str, step: str, stats: list[dict[str, Any]]) -> bool:
    """Push one finished step's counts; False (after a warning) when there is no gateway or it fails."""
    if not gateway:
        return False
    registry = step_registry(run, step, step_counts(step, stats))
    try:
        push_to_gateway(gateway, JOB, registry, grouping_key=grouping_key(run, step), timeout=TIMEOUT_SECONDS)
    except (OSError, urllib.error.URLError) as err:
        warn(f"could not push the {step} step's metrics to the Pushgateway {gateway} ({_reason(err)}); "
             "the step goes on")
        return False
    return True


def delete_run(gateway: str | None, run: str, steps: Iterable[str] = DATA_STEPS) -> bool:
    """Delete every step group of a run from the Pushgateway (the end of the run); False after a warning."""
    if not gateway:
        return False
    for step in steps:
        try:
            delete_from_gateway(gateway, JOB, grouping_key=grouping_key(run, step), timeout=TIMEOUT_SECONDS)
        except (OSError, urllib.error.URLError) as err:
            warn(f"could not delete run {run!r}'s metrics from the Pushgateway {gateway} ({_reason(err)})")
            return False
    return True


def data_exposition() -> str:
    """What the data steps push, every metric with one sample (the dashboard test checks names against it)."""
    from prometheus_client.exposition import generate_latest

    counts = {name: {"example" if extra else "": 1.0} for name, (_, extra) in COUNTERS.items()}
    return generate_latest(step_registry("example", "example", counts)).decode()


def _reason(err: BaseException) -> str:
    return str(getattr(err, "reason", None) or err)
