"""Stats and metrics -> Markdown (KFP's Markdown viewer) and one self-contained HTML page (SVG plots)."""

from __future__ import annotations

import html
import json
from typing import Any


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items()) or "-"
    return "-" if v is None else str(v)


def table(rows: dict[str, Any]) -> str:
    lines = ["| | |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in rows.items()]
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


def render_markdown(report: dict[str, Any]) -> str:
    m = report["metrics"]
    parts = [f"# Evaluation: {report['recipe']}", "", table({
        "held-out loss": m["loss"], "perplexity": m["perplexity"], "bits per byte": m["bits_per_byte"],
        "tokens evaluated": int(m["tokens"]),
        "initial val loss (step 0)": report["train"].get("initial_val_loss"),
        "final val loss": report["train"].get("final_val_loss"),
    })]
    if report.get("steps"):
        parts += ["", "## Steps", "", table(report["steps"])]
    if report.get("ledger"):
        from pretrain.data import ledger

        parts += ["", ledger.markdown(report["ledger"])]
    if report.get("mixture"):
        from pretrain.data import mixture

        parts += ["", mixture.markdown(report["mixture"], report.get("trained_tokens_by_source"))]
    parts += ["", "## Samples", ""]
    for s in report["samples"]:
        parts += [f"**{html.escape(s['prompt'].strip())}**", "", "```", s["prompt"] + s["completion"], "```", ""]
    return "\n".join(parts)


def svg_curve(points: list[tuple[float, float]], title: str, width: int = 560, height: int = 240) -> str:
    if len(points) < 2:
        return ""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    pad = 36

    def sx(x: float) -> float:
        return pad + (x - x0) / ((x1 - x0) or 1) * (width - 2 * pad)

    def sy(y: float) -> float:
        return height - pad - (y - y0) / ((y1 - y0) or 1) * (height - 2 * pad)

    path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">'
            f'<title>{html.escape(title)}</title><rect width="100%" height="100%" fill="#fff"/>'
            f'<polyline fill="none" stroke="#2563eb" stroke-width="2" points="{path}"/>'
            f'<text x="{pad}" y="16" font-size="13">{html.escape(title)}</text>'
            f'<text x="4" y="{sy(y1) + 4:.0f}" font-size="10">{y1:.3g}</text>'
            f'<text x="4" y="{sy(y0) + 4:.0f}" font-size="10">{y0:.3g}</text>'
            f'<text x="{sx(x1) - 20:.0f}" y="{height - 8}" font-size="10">step {x1:g}</text></svg>')


def render_html(report: dict[str, Any]) -> str:
    hist = report.get("history", [])
    train = [(r["step"], r["loss"]) for r in hist if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in hist if "val_loss" in r]
    m = report["metrics"]
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in {
        "held-out loss": m["loss"], "perplexity": m["perplexity"], "bits per byte": m["bits_per_byte"],
        "tokens evaluated": int(m["tokens"]), **{f"train: {k}": v for k, v in report["train"].items()}}.items())
    steps = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(_fmt(v))}</td></tr>"
                    for k, v in report.get("steps", {}).items())
    samples = "".join(f"<h4>{html.escape(s['prompt'])}</h4><pre>{html.escape(s['prompt'] + s['completion'])}</pre>"
                      for s in report["samples"])
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>pretrain report: {html.escape(report['recipe'])}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto}}table{{border-collapse:collapse}}
th,td{{border:1px solid #ddd;padding:4px 8px;text-align:left}}pre{{background:#f6f8fa;padding:8px;white-space:pre-wrap}}
</style></head><body>
<h1>pretrain report: {html.escape(report['recipe'])}</h1>
<h2>Held-out metrics</h2><table>{rows}</table>
<h2>Training</h2>{svg_curve(train, "training loss")}{svg_curve(val, "validation loss")}
<h2>Steps</h2><table>{steps}</table>
<h2>Samples</h2>{samples}
<script type="application/json" id="report">{html.escape(json.dumps(report["metrics"]))}</script>
</body></html>
"""
