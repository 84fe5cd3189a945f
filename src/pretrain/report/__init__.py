"""Stats and metrics -> Markdown (KFP's Markdown viewer) and one self-contained HTML page (inline SVG plots).

``summary``: a data step's Markdown summary and Metrics; ``sections``: the evaluation report's content, rendered
by ``markdown`` and ``page``; ``svg``: the small chart functions.
"""

from __future__ import annotations

from pretrain.report.markdown import render_markdown
from pretrain.report.page import render_html
from pretrain.report.summary import flat_metrics, manifest_markdown, table
from pretrain.report.svg import bar_chart, line_chart


def svg_curve(points: list[tuple[float, float]], title: str, width: int = 560, height: int = 240) -> str:
    """One curve over steps (kept for callers of the first report); '' with fewer than two points."""
    if len(points) < 2:
        return ""
    slug = "".join(c if c.isalnum() else "-" for c in title.lower()).strip("-") or "curve"
    return line_chart({title: points}, plot_id=f"plot-{slug}", title=title, x_label="step", y_label=title,
                      width=width, height=height)


__all__ = ["bar_chart", "flat_metrics", "line_chart", "manifest_markdown", "render_html", "render_markdown",
           "svg_curve", "table"]
