"""C4 rules (Raffel et al. 2020, section 2.2; the tensorflow-datasets c4_utils code, as datatrove 0.10 has them).

``published``: lines without terminal punctuation, with fewer than 3 words, with a word over 1000
characters, mentioning javascript or a cookie/policy notice are removed; a page with "lorem ipsum"
or a curly bracket in a kept line is dropped, and so is a page left with fewer than 5 sentences.

``default`` keeps technical pages: no curly-bracket rule (code snippets are content); a page that is
almost all code-like lines is dropped instead (``max_code_fraction``: minified scripts, data dumps);
sentences are counted per prose paragraph (consecutive prose lines joined, so hard-wrapped text counts)
and each code block or table counts as one, with CJK/Arabic/Indic sentence marks and CJK characters
counted as words, a line ending in a colon (it introduces a block) as a sentence, and 3 of them are
enough (C4's 5 dropped half of the real reference pages of 50-150 words: a two-sentence definition
with a grammar or an example is a page); only the boilerplate lines
(javascript, cookie/policy notices) are removed, code lines never.
"""

from __future__ import annotations

import dataclasses
import re

from pretrain.config import C4Settings
from pretrain.data.filters.base import NEWLINE, SPACE, UNSPACED_RE, WORD_CJK_RE, Doc, Rule, Step, Transform, above

CITATION_RE = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
END_PUNCTUATION = (".", "?", "!", '"', "'")
POLICY_SUBSTRINGS = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies",
                     "use cookies")
_SENTENCE_END_RE = re.compile(r"[.!?。！？؟۔।॥]+[\"'”’)\]」』]*(?=\s|$)")
# default: a sentence that introduces a code block, a table or a list ends its line with a colon
_DEFAULT_SENTENCE_END_RE = re.compile(r"[.!?。！？؟۔।॥]+[\"'”’)\]」』]*(?=\s|$)|[:：](?=[^\S\n]*(?:\n|$))")


@dataclasses.dataclass
class Lines:
    """One pass over a page's lines: what C4 keeps, counts and finds."""

    kept: list[str]
    removed: list[int]  # indices into doc.lines (default: boilerplate lines only)
    sentences: int
    lorem: bool
    bracket_line: str | None


def rules(cfg: C4Settings) -> list[Step]:
    published = cfg.variant == "published"
    out: list[Step] = []

    def lines(d: Doc) -> Lines:
        key = f"_c4_{cfg.variant}"
        if key not in d.__dict__:
            d.__dict__[key] = _published_lines(d, cfg) if published else _default_lines(d, cfg)
        return d.__dict__[key]

    if cfg.lorem_ipsum:
        out.append(Rule("c4.lorem_ipsum", lambda d: "lorem ipsum" if lines(d).lorem else None))
    if published and cfg.curly_bracket:
        out.append(Rule("c4.curly_bracket", lambda d: lines(d).bracket_line))
    if not published and cfg.max_code_fraction is not None:
        out.append(Rule("c4.max_code_fraction", lambda d: above(d.code_fraction, cfg.max_code_fraction)))
    if cfg.min_sentences:
        out.append(Rule("c4.min_sentences", lambda d: s if (s := lines(d).sentences) < cfg.min_sentences else None))
    if cfg.remove_lines:
        def remove(d: Doc) -> tuple[str | None, dict[str, int]]:
            found = lines(d)
            if published:
                text = "\n".join(found.kept).strip()
                return (None, {}) if text == d.text else (text, {"lines": max(0, len(d.lines) - len(found.kept))})
            if not found.removed:
                return None, {}
            drop = set(found.removed)
            return "\n".join(ln for i, ln in enumerate(d.lines) if i not in drop), {"lines": len(drop)}
        out.append(Transform("c4.remove_lines", remove))
    return out


def _sentences(line: str) -> int:
    return max(1, len(_SENTENCE_END_RE.findall(line)))


def _published_lines(d: Doc, cfg: C4Settings) -> Lines:
    kept: list[str] = []
    sentences = 0
    for raw in d.text.splitlines():
        line = raw.strip()
        words = line.split()
        if any(len(w) > cfg.max_word_length for w in words):
            continue
        if cfg.remove_citations:
            line = CITATION_RE.sub("", line)
        if not line.endswith(END_PUNCTUATION) or line.endswith("..."):
            continue
        if len(words) < cfg.min_words_per_line:
            continue
        low = line.lower()
        if cfg.lorem_ipsum and "lorem ipsum" in low:
            return Lines(kept, [], sentences, True, None)
        if cfg.javascript and "javascript" in low:
            continue
        if cfg.curly_bracket and "{" in line:
            return Lines(kept, [], sentences, False, line)
        if cfg.policy and any(p in low for p in POLICY_SUBSTRINGS):
            continue
        sentences += _sentences(line)
        kept.append(line)
    return Lines(kept, [], sentences, False, None)


def _default_lines(d: Doc, cfg: C4Settings) -> Lines:
    """Boilerplate lines to remove, and sentences counted over prose paragraphs (hard-wrapped lines joined)."""
    low = d.text.lower()
    lorem = cfg.lorem_ipsum and "lorem ipsum" in low
    removed: list[int] = []
    if (cfg.javascript and "javascript" in low) or (cfg.policy and any(p in low for p in POLICY_SUBSTRINGS)):
        for i, (line, is_code) in enumerate(zip(d.lines, d.code_lines, strict=True)):
            line_low = line.lower()
            if not is_code and ((cfg.javascript and "javascript" in line_low)
                                or (cfg.policy and any(p in line_low for p in POLICY_SUBSTRINGS))):
                removed.append(i)
    drop = set(removed)
    if drop:
        code = d.code_lines
        prose = "\n".join(ln for i, ln in enumerate(d.lines) if i not in drop and not code[i] and ln.strip())
    else:
        prose = "\n".join(d.prose_lines)
    if cfg.remove_citations and "[" in prose:
        prose = CITATION_RE.sub("", prose)
    pieces = _DEFAULT_SENTENCE_END_RE.split(prose)[:-1]  # the text before each sentence end
    count = (lambda p: len(WORD_CJK_RE.findall(p))) if UNSPACED_RE.search(prose) else (lambda p: len(p.split()))
    sentences = sum(count(p) >= cfg.min_words_per_line for p in pieces)
    # a code block or a table (a run of code or data lines, blank lines inside it included) is a unit of content,
    # as a sentence is
    visible = d.line_counts.sum(axis=1) - d.line_counts[:, SPACE] - d.line_counts[:, NEWLINE]
    runs = d.layout_lines[visible > 0]
    sentences += int(runs[:1].sum() + (runs[1:] & ~runs[:-1]).sum())
    return Lines([], removed, sentences, lorem, None)
