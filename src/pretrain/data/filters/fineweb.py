"""FineWeb's extra rules (Penedo et al. 2024, section 3.3), as datatrove 0.10's FineWebQualityFilter has them.

A page is dropped when too few lines end in terminal punctuation, too many lines are short, too many
characters sit in duplicated lines, or there are many newlines per word (lists). ``default`` judges the
line ratios and the duplicated characters over prose lines only, so the code lines, table rows and short
API names of a documentation page do not count as "list-like" content, and it judges line endings on
hard-wrapped text per unwrapped line (``Doc.prose_units``: plain-text pages, e-mail, docstrings end a
line mid-sentence every 70-80 characters), a colon at the end of a line (before a block) included;
``published`` judges every non-blank line.
"""

from __future__ import annotations

from pretrain.config import FineWebSettings
from pretrain.data.filters.base import Doc, Rule, above, below
from pretrain.data.filters.gopher import exempt

# Sentence-final marks of many scripts (a subset of datatrove's TERMINAL_PUNCTUATION: the common ones).
TERMINAL_PUNCTUATION = (".", "!", "?", "。", "！", "？", "؟", "۔", "।", "॥", "።", "፧", "‼", "⁇", "⁈", "⁉", "︒",
                        "﹒", "﹖", "﹗", "．", "｡", "᙮", "჻", "܂", "܁", "߹", "၊", "။", "។", "៕")
# default: a line that introduces a code block, a table or a list ends a sentence with a colon
LINE_END_PUNCTUATION = (*TERMINAL_PUNCTUATION, ":", "：")


def rules(cfg: FineWebSettings) -> list[Rule]:
    published = cfg.variant == "published"
    out: list[Rule] = []

    def lines(d: Doc) -> list[str]:
        return d.nonblank_lines if published else d.prose_lines

    def line_ends(d: Doc) -> list[str]:
        """What line-ending rules judge: every line, or (default) prose lines with hard-wrapped ones joined."""
        return d.nonblank_lines if published else d.prose_units

    if cfg.min_line_punct_ratio is not None:
        def punct(d: Doc) -> float | None:
            items = line_ends(d)
            if not items:
                return 0.0 if published and cfg.min_line_punct_ratio > 0 else None
            ends = TERMINAL_PUNCTUATION if published else LINE_END_PUNCTUATION
            ratio = sum(ln.endswith(ends) for ln in items) / len(items)
            if ratio == 0 and cfg.line_punct_exclude_zero:
                return None
            return below(ratio, cfg.min_line_punct_ratio)
        out.append(Rule("fineweb.min_line_punct_ratio", punct))
    if cfg.max_short_line_ratio is not None:
        def short(d: Doc) -> float | None:
            items = line_ends(d)
            if not items:
                return None
            return above(sum(len(ln) <= cfg.short_line_length for ln in items) / len(items), cfg.max_short_line_ratio)
        out.append(Rule("fineweb.max_short_line_ratio", short))
    if cfg.max_char_dup_ratio is not None:
        def dup(d: Doc) -> float | None:
            if not published and exempt(d, cfg.exempt_min_distinct_words, cfg.exempt_min_unique_fraction):
                return None
            items = lines(d)
            unique = set(items)
            chars = sum(map(len, items)) - sum(map(len, unique))
            return above(chars / max(1, len(d.text) - d.text.count("\n")), cfg.max_char_dup_ratio)
        out.append(Rule("fineweb.max_char_dup_ratio", dup))
    if cfg.max_list_ratio is not None:
        def list_ratio(d: Doc) -> float | None:
            if not d.words:
                return None
            newlines = d.text.count("\n") if published else max(0, len(d.prose_lines) - 1)
            return above(newlines / len(d.words), cfg.max_list_ratio) if d.spaced else None
        out.append(Rule("fineweb.max_list_ratio", list_ratio))
    return out
