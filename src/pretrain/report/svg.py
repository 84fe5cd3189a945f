"""Small inline-SVG charts for the report: no JavaScript, no external fonts or URLs, readable in KFP's HTML viewer.

Every chart is one ``<svg class="plot" id=...>`` with a white background, axes with ticks and labels, and a
legend when it has more than one series, so a browser test can find each plot and check it is not blank.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence

# Okabe-Ito: distinguishable by colour-blind readers; the first colour is the lone series' colour.
PALETTE = ("#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#7a6a00", "#000000")
FONT = 'font-family="DejaVu Sans,Arial,sans-serif"'
MAX_POINTS = 2000  # a polyline with more points adds bytes, not information, at this width


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2, 2.5 or 5 times a power of ten) covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi < lo:
        lo, hi = hi, lo
    if hi == lo:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.floor(lo / step + 1e-9) * step
    ticks, t = [], first
    while t < hi + step * (1 - 1e-9):
        ticks.append(round(t, 12))
        t += step
    return ticks


def fmt_tick(v: float) -> str:
    """Short tick labels: 1.5k, 2M, 0.003, 3e-05."""
    a = abs(v)
    if a == 0:
        return "0"
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if a >= scale:
            return f"{v / scale:.3g}{suffix}"
    return f"{v:.3g}"


def _finite(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    out = []
    for x, y in points:
        if x is None or y is None:
            continue
        try:
            fx, fy = float(x), float(y)
        except (TypeError, ValueError):
            continue
        if math.isfinite(fx) and math.isfinite(fy):
            out.append((fx, fy))
    return out


def _thin(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    if len(points) <= MAX_POINTS:
        return points
    stride = math.ceil(len(points) / MAX_POINTS)
    return points[::stride] + ([points[-1]] if (len(points) - 1) % stride else [])


def _text(x: float, y: float, s: str, size: int = 11, anchor: str = "start", extra: str = "") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" {FONT} text-anchor="{anchor}" fill="#222"{extra}>'
            f"{html.escape(s)}</text>")


def _open(plot_id: str, title: str, width: int, height: int) -> str:
    t = html.escape(title)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" id="{html.escape(plot_id)}" width="{width}" '
            f'height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{t}"><title>{t}</title>'
            f'<rect width="{width}" height="{height}" fill="#fff"/>' + _text(width / 2, 18, title, 13, "middle",
                                                                               ' font-weight="bold"'))


def _legend(names: Sequence[str], right: float, top: float) -> str:
    """Swatch + name per series, right-aligned in the plot's top corner, on a white box."""
    if len(names) < 2:
        return ""
    widths = [min(len(n), 28) * 6.5 + 22 for n in names]
    w, h = max(widths) + 8, 16 * len(names) + 6
    x0 = right - w
    parts = [f'<g class="legend"><rect x="{x0:.1f}" y="{top:.1f}" width="{w:.1f}" height="{h}" fill="#fff" '
             f'fill-opacity="0.9" stroke="#ccc"/>']
    for i, name in enumerate(names):
        y = top + 6 + 16 * i
        parts.append(f'<rect x="{x0 + 6:.1f}" y="{y + 2:.1f}" width="12" height="8" fill="{color(i)}"/>')
        parts.append(_text(x0 + 24, y + 10, name[:28], 11))
    return "".join(parts) + "</g>"


def line_chart(series: Mapping[str, Sequence[tuple[float, float]]], *, plot_id: str, title: str, x_label: str,
               y_label: str, width: int = 640, height: int = 280) -> str:
    """One line per series over a shared x axis (e.g. loss over steps); '' when no series has a finite point."""
    data = {name: _thin(_finite(pts)) for name, pts in series.items()}
    data = {k: v for k, v in data.items() if v}
    if not data:
        return ""
    xs = [x for pts in data.values() for x, _ in pts]
    ys = [y for pts in data.values() for _, y in pts]
    xt, yt = nice_ticks(min(xs), max(xs)), nice_ticks(min(ys), max(ys))
    x0, x1, y0, y1 = xt[0], xt[-1], yt[0], yt[-1]
    left, right, top, bottom = 62, width - 16, 30, height - 44

    def sx(x: float) -> float:
        return left + (x - x0) / ((x1 - x0) or 1) * (right - left)

    def sy(y: float) -> float:
        return bottom - (y - y0) / ((y1 - y0) or 1) * (bottom - top)

    parts = [_open(plot_id, title, width, height)]
    for t in yt:
        parts.append(f'<line x1="{left}" x2="{right}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" stroke="#e5e5e5"/>')
        parts.append(_text(left - 6, sy(t) + 4, fmt_tick(t), 10, "end"))
    for t in xt:
        parts.append(f'<line x1="{sx(t):.1f}" x2="{sx(t):.1f}" y1="{bottom}" y2="{bottom + 5}" stroke="#555"/>')
        parts.append(_text(sx(t), bottom + 17, fmt_tick(t), 10, "middle"))
    parts.append(f'<path d="M{left},{top} V{bottom} H{right}" fill="none" stroke="#555"/>')
    parts.append(_text((left + right) / 2, height - 8, x_label, 11, "middle"))
    parts.append(_text(14, (top + bottom) / 2, y_label, 11, "middle",
                       f' transform="rotate(-90 14 {(top + bottom) / 2:.1f})"'))
    for i, (name, pts) in enumerate(data.items()):
        c = color(i)
        parts.append(f'<g class="series" data-name="{html.escape(name)}">')
        if len(pts) > 1:
            path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
            parts.append(f'<polyline fill="none" stroke="{c}" stroke-width="2" points="{path}"/>')
        if len(pts) <= 40:
            parts += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{c}"/>' for x, y in pts]
        parts.append("</g>")
    parts.append(_legend(list(data), right - 4, top + 2))
    return "".join(parts) + "</svg>"


def bar_chart(categories: Sequence[str], series: Mapping[str, Sequence[float | None]], *, plot_id: str,
              title: str, value_label: str, stacked: bool = False, width: int = 640) -> str:
    """Horizontal bars, one row per category and one bar (or stack segment) per series; '' when nothing to show.

    Horizontal so long names (filter rules, sources, tasks) stay readable; ``None`` draws no bar."""
    names = list(series)
    values = {n: [float(v) if v is not None and math.isfinite(float(v)) else None for v in series[n]] for n in names}
    if not categories or all(v is None for vs in values.values() for v in vs):
        return ""
    if stacked:
        totals = [sum(values[n][i] or 0.0 for n in names) for i in range(len(categories))]
    else:
        totals = [max((values[n][i] or 0.0) for n in names) for i in range(len(categories))]
    lo = min(0.0, *(v for vs in values.values() for v in vs if v is not None))
    ticks = nice_ticks(lo, max(totals) if max(totals) > lo else lo + 1)
    v0, v1 = ticks[0], ticks[-1]
    label_w = min(230, 6.6 * max(len(c) for c in categories) + 14)
    band = 18 if stacked or len(names) == 1 else 10 * len(names) + 8
    legend_h = 16 * len(names) + 10 if len(names) > 1 else 0
    left, right, top = label_w, width - 16, 30 + legend_h
    height = int(top + band * len(categories) + 8 * len(categories) + 44)
    bottom = height - 38

    def sx(v: float) -> float:
        return left + (v - v0) / ((v1 - v0) or 1) * (right - left)

    parts = [_open(plot_id, title, width, height)]
    for t in ticks:
        parts.append(f'<line x1="{sx(t):.1f}" x2="{sx(t):.1f}" y1="{top}" y2="{bottom}" stroke="#e5e5e5"/>')
        parts.append(_text(sx(t), bottom + 15, fmt_tick(t), 10, "middle"))
    parts.append(f'<path d="M{left},{top} V{bottom} H{right}" fill="none" stroke="#555"/>')
    parts.append(_text((left + right) / 2, height - 8, value_label, 11, "middle"))
    row = band + 8
    for i, cat in enumerate(categories):
        y = top + 4 + row * i
        shown = cat if len(cat) <= 34 else cat[:33] + "…"
        parts.append(f"<g><title>{html.escape(cat)}</title>" + _text(left - 6, y + band / 2 + 4, shown, 11, "end")
                     + "</g>")
        acc = 0.0
        for j, n in enumerate(names):
            v = values[n][i]
            if v is None:
                continue
            if stacked:
                x_a, x_b, yy, h = sx(acc), sx(acc + v), y, band
                acc += v
            else:
                x_a, x_b = sorted((sx(0.0), sx(v)))
                yy, h = y + (0 if len(names) == 1 else 10 * j), band if len(names) == 1 else 9
            parts.append(f'<rect class="bar" x="{x_a:.1f}" y="{yy:.1f}" width="{max(x_b - x_a, 0.5):.1f}" '
                         f'height="{h}" fill="{color(j)}"><title>{html.escape(f"{cat} · {n}: {v:,.6g}")}</title>'
                         "</rect>")
    if len(names) > 1:
        parts.append(_legend(names, right, 28))
    return "".join(parts) + "</svg>"
