"""The document ledger: every document read is written, skipped for a reason, dropped by a rule, or a duplicate.

Built from the manifests the data steps already write (each filter manifest carries its partition's
ingest stats), checked so that the counts add up, and shown in the run summary and the Markdown
outputs: ``read = written + skipped by reason``, ``written = kept + dropped by rule``,
``kept = deduplicated + duplicates``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pretrain.manifest import Manifest, merge_stats


def build(filtered: Iterable[Manifest], dedup_by_source: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per-source and total counts from the filter manifests and dedup's per-source stats."""
    per_source: dict[str, dict[str, Any]] = {}
    for m in filtered:
        source = m.extra["partition"]["source"]
        ingest = m.extra.get("ingest_stats", {})
        row = {
            "read": ingest.get("records", 0), "written": ingest.get("documents", 0),
            "skipped": ingest.get("skipped", {}), "repaired": ingest.get("repaired", {}),
            "files_skipped": ingest.get("files_skipped", {}), "skipped_types": ingest.get("skipped_types", {}),
            "kept": m.stats.get("kept", 0), "dropped": m.stats.get("dropped_by_reason", {}), "partitions": 1,
        }
        per_source[source] = merge_stats([per_source.get(source, {}), row])
    for source, row in per_source.items():
        dedup = dedup_by_source.get(source, {})
        row["duplicates"] = dedup.get("duplicates", 0)
        row["deduplicated"] = row["kept"] - row["duplicates"]
        for key in ("skipped", "repaired", "files_skipped", "skipped_types", "dropped"):
            row.setdefault(key, {})
        row["balanced"] = balanced(row)
    total = merge_stats(per_source.values())
    total["balanced"] = all(r["balanced"] for r in per_source.values())
    return {"sources": per_source, "total": total}


def balanced(row: dict[str, Any]) -> bool:
    return (row["read"] == row["written"] + sum(row["skipped"].values())
            and row["written"] == row["kept"] + sum(row["dropped"].values())
            and row["kept"] == row["deduplicated"] + row["duplicates"])


def _reasons(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))) or "none"


def lines(ledger: dict[str, Any]) -> list[str]:
    """One line per source, for the CLI summary: read = written + skipped; written = kept + dropped; ..."""
    out = []
    for source, r in sorted(ledger["sources"].items()):
        skipped, dropped = sum(r["skipped"].values()), sum(r["dropped"].values())
        out.append(f"{source}: read {r['read']:,} = written {r['written']:,} + skipped {skipped:,} "
                   f"({_reasons(r['skipped'])}); written = kept {r['kept']:,} + dropped {dropped:,} "
                   f"({_reasons(r['dropped'])}); kept = unique {r['deduplicated']:,} + duplicates "
                   f"{r['duplicates']:,}" + ("" if r["balanced"] else "  [DOES NOT ADD UP]"))
    return out


def markdown(ledger: dict[str, Any]) -> str:
    """The ledger as a Markdown table (KFP's Markdown viewer, the report)."""
    rows = ["| source | read | written | skipped (by reason) | dropped by filters | duplicates | final | adds up |",
            "|---|---:|---:|---|---|---:|---:|---|"]
    for source, r in sorted(ledger["sources"].items()):
        rows.append(f"| {source} | {r['read']:,} | {r['written']:,} | {_reasons(r['skipped'])} | "
                    f"{_reasons(r['dropped'])} | {r['duplicates']:,} | {r['deduplicated']:,} | "
                    f"{'yes' if r['balanced'] else 'NO'} |")
    t = ledger["total"]
    rows.append(f"| **all** | {t.get('read', 0):,} | {t.get('written', 0):,} | {_reasons(t.get('skipped', {}))} | "
                f"{_reasons(t.get('dropped', {}))} | {t.get('duplicates', 0):,} | {t.get('deduplicated', 0):,} | "
                f"{'yes' if t['balanced'] else 'NO'} |")
    extra = []
    for source, r in sorted(ledger["sources"].items()):
        if r["skipped_types"]:
            extra.append(f"- {source}: non-text payloads skipped by type: {_reasons(r['skipped_types'])}")
        if r["repaired"]:
            extra.append(f"- {source}: repaired and kept: {_reasons(r['repaired'])}")
        if r["files_skipped"]:
            extra.append(f"- {source}: file-level problems: {_reasons(r['files_skipped'])}")
    return "\n".join(["#### Documents: read = written + skipped; written = kept + dropped; kept = final + duplicates",
                      "", *rows, "", *extra]) + "\n"
