"""The evaluation report as Markdown (KFP's Markdown viewer, ``evaluate/report.md``): the HTML report's tables."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pretrain.report.sections import Code, Gallery, Note, Plot, Section, Table, build, unavailable

MAX_CELL = 160  # document text in a table cell: an excerpt, the HTML report shows more


def _cell(text: str, excerpt: bool) -> str:
    text = text.replace("\r", "")
    if excerpt and len(text) > MAX_CELL:
        text = text[:MAX_CELL] + "…"
    text = text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ↵ ")
    return f"`{text}`" if excerpt and text and "`" not in text else text


def table(t: Table) -> str:
    """A Markdown table; a key/value table (empty headers) keeps the empty header row Markdown needs."""
    lines = ["| " + " | ".join(t.headers) + " |", "|" + "---|" * len(t.headers)]
    lines += ["| " + " | ".join(_cell(c, i in t.pre) for i, c in enumerate(row)) + " |" for row in t.rows]
    return "\n".join(lines)


def _fence(text: str) -> str:
    ticks = "```"
    while ticks in text:
        ticks += "`"
    return f"{ticks}\n{text}\n{ticks}"


def section(s: Section) -> list[str]:
    out = ["#" * s.level + " " + s.title, ""]
    for b in s.blocks:
        if isinstance(b, Table):
            out += [table(b), ""]
        elif isinstance(b, Note):
            out += [f"_{b.text}_" if b.missing else b.text, ""]
        elif isinstance(b, Plot):
            out += [f"_Plot in the HTML report: {b.title}._", ""]
        elif isinstance(b, Code):
            out += [f"**{b.title.replace('*', '')}**", "", _fence(b.text), ""]
        elif isinstance(b, Gallery):
            rows = [[str(i), *(b.items[i - 1][1] + ["", ""])[:2]] for i in range(1, len(b.items) + 1)]
            out += ["_Images in the HTML report._", "", table(Table(["#", "", ""], rows, pre=frozenset({1, 2}))), ""]
    return out


def render_markdown(report: Mapping[str, Any]) -> str:
    """The whole report in Markdown: results, training, data funnel and curation, samples."""
    sections = build(report)
    parts = [f"# Evaluation: {report.get('recipe', '?')}", ""]
    if missing := unavailable(sections):
        parts += [f"_Not available in this report: {', '.join(missing)}._", ""]
    for s in sections:
        parts += section(s)
    return "\n".join(parts).rstrip() + "\n"
