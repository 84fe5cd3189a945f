"""The evaluation report as ONE self-contained HTML page: inline CSS and SVG, no script, no external URL
(an image run's example images are inline ``data:image/...;base64`` URIs, nothing else).

It is the KFP ``HTML`` artifact (shown in an iframe by the KFP UI) and ``evaluate/report.html``.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from typing import Any

from pretrain.report.images import safe_uri
from pretrain.report.sections import Code, Gallery, Note, Plot, Section, Table, build, heldout, unavailable

CSS = """
body{font-family:"DejaVu Sans",Arial,sans-serif;max-width:1000px;margin:1.5em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:1.8em}h3{margin-top:1.4em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}th{background:#f3f4f6}
td.num{text-align:right;font-variant-numeric:tabular-nums}
pre{background:#f6f8fa;padding:8px;white-space:pre-wrap;word-break:break-word;margin:.3em 0}
pre.excerpt{max-height:9em;overflow:auto;font-size:.85em;margin:0;padding:4px}
svg.plot{display:block;margin:.8em 0;max-width:100%;height:auto;border:1px solid #eee}
p.missing{color:#8a5300;background:#fff8e6;border-left:4px solid #e69f00;padding:4px 8px}
nav a{margin-right:1em}
div.gallery{display:flex;flex-wrap:wrap;gap:10px}
div.gallery figure{margin:0;width:150px;font-size:.8em}
div.gallery img{width:96px;height:96px;image-rendering:pixelated;border:1px solid #ddd}
"""


def _numeric(text: str) -> bool:
    t = text.replace(",", "").replace("%", "").replace(" pts", "").strip()
    try:
        float(t)
    except ValueError:
        return False
    return True


def table(t: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in t.headers) if any(t.headers) else ""
    rows = []
    for row in t.rows:
        cells = []
        for i, c in enumerate(row):
            if i in t.pre and c not in ("", "-"):
                cells.append(f'<td><pre class="excerpt">{html.escape(c)}</pre></td>')
            elif i == 0 and not any(t.headers):
                cells.append(f"<th>{html.escape(c)}</th>")
            else:
                cells.append(f'<td{" class=num" if _numeric(c) else ""}>{html.escape(c)}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return "<table>" + (f"<thead><tr>{head}</tr></thead>" if head else "") + "<tbody>" + "".join(rows) + \
        "</tbody></table>"


def gallery(g: Gallery) -> str:
    """Figures of inline images with their caption lines; an item without an inline image shows its lines only."""
    figures = []
    for uri, lines in g.items:
        img = f'<img src="{html.escape(uri)}" alt="{html.escape(lines[0] if lines else "")}">' if safe_uri(uri) else ""
        caption = "<br>".join(html.escape(line) for line in lines)
        figures.append(f"<figure>{img}<figcaption>{caption}</figcaption></figure>")
    return '<div class="gallery">' + "".join(figures) + "</div>"


def section(s: Section) -> str:
    out = [f'<section id="{html.escape(s.id)}"><h{s.level}>{html.escape(s.title)}</h{s.level}>']
    for b in s.blocks:
        if isinstance(b, Table):
            out.append(table(b))
        elif isinstance(b, Note):
            out.append(f'<p class="missing">{html.escape(b.text)}</p>' if b.missing
                       else f"<p>{html.escape(b.text)}</p>")
        elif isinstance(b, Plot):
            out.append(f"<figure>{b.svg}</figure>")
        elif isinstance(b, Code):
            out.append(f"<h4>{html.escape(b.title)}</h4><pre>{html.escape(b.text)}</pre>")
        elif isinstance(b, Gallery):
            out.append(gallery(b))
    return "".join(out) + "</section>"


def embedded_json(report: Mapping[str, Any]) -> str:
    """The headline numbers as JSON for tools that scrape the page; '<' escaped so no text can end the element."""
    overall, by_source = heldout(report)
    data = {"recipe": report.get("recipe"), "objective": report.get("objective"), "metrics": overall,
            "by_source": by_source, "tasks": report.get("tasks") or {}, "train": report.get("train") or {}}
    if isinstance(report.get("images"), Mapping):  # an image run: its results, without the example images
        data["images"] = {k: v for k, v in report["images"].items() if k != "examples"}
    return json.dumps(data, default=str, sort_keys=True).replace("<", "\\u003c").replace(">", "\\u003e")


def render_html(report: Mapping[str, Any]) -> str:
    """The whole report as one HTML page; every plot an ``<svg class="plot" id="plot-...">``."""
    sections = build(report)
    name = html.escape(str(report.get("recipe", "?")))
    nav = "".join(f'<a href="#{s.id}">{html.escape(s.title)}</a>' for s in sections if s.level == 2)
    missing = unavailable(sections)
    banner = (f'<p class="missing">Not available in this report: {html.escape(", ".join(missing))}.</p>'
              if missing else "")
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>pretrain report: {name}</title><style>{CSS}</style></head><body>\n"
            f"<h1>pretrain report: {name}</h1><nav>{nav}</nav>{banner}\n"
            + "\n".join(section(s) for s in sections)
            + f'\n<script type="application/json" id="report">{embedded_json(report)}</script>\n</body></html>\n')
