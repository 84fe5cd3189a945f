"""A step's summary for the KFP UI (Markdown) and its numeric stats (Metrics), from its manifest."""

from __future__ import annotations

import math
from typing import Any


def fmt(v: Any) -> str:
    """One value as a short human string: ints with separators, floats to 4 significant digits, None as '-'."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, dict):
        return ", ".join(f"{k}: {fmt(x)}" for k, x in v.items()) or "-"
    if isinstance(v, (list, tuple)):
        return ", ".join(fmt(x) for x in v) or "-"
    return str(v)


def table(rows: dict[str, Any]) -> str:
    lines = ["| | |", "|---|---|"]
    lines += [f"| {k} | {fmt(v)} |" for k, v in rows.items()]
    return "\n".join(lines)


def manifest_markdown(manifest) -> str:
    """A step's summary for the KFP UI: what it made, where, and its stats."""
    from pretrain.data import ledger

    flat = {k: v for k, v in manifest.stats.items() if not isinstance(v, (list,))}
    text = (f"### {manifest.kind}\n\nroot: `{manifest.root}`  \nshards: {len(manifest.shards)}  \n"
            f"fingerprint: `{manifest.fingerprint}`\n\n{table(flat)}\n")
    if "ledger" in manifest.extra:
        text += "\n" + ledger.markdown(manifest.extra["ledger"])
    if manifest.kind == "tokens" and "mixture" in manifest.extra:
        from pretrain.data import mixture

        text += "\n" + mixture.markdown(manifest.extra["mixture"])
    elif manifest.kind == "documents" and "records" in manifest.stats:
        s = manifest.stats
        text += (f"\nread {s['records']:,} = written {s['documents']:,} + skipped "
                 f"{sum(s.get('skipped', {}).values()):,}\n")
    return text


def flat_metrics(manifest) -> dict[str, float]:
    """Numeric stats, flattened with dotted names, for KFP ``Metrics``."""
    out: dict[str, float] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[prefix] = float(value)

    walk("", manifest.stats)
    return out
