"""The segmented document and the rule contract every rule family shares.

A :class:`Doc` segments its text once, lazily: lines, paragraphs, words, per-line character classes
(one ``numpy.bincount`` over the code points) and which lines look like code. Every rule reads the
same cached segmentation, so adding a rule adds its own arithmetic, not another pass of splitting.

A :class:`Rule` judges a document: ``None`` keeps it, anything else (the number or string that
tripped it) drops it and is written to the dropped shard's ``value`` column. A :class:`Transform`
rewrites a kept document's text (C4 boilerplate-line removal, PII redaction) and reports counts.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable
from typing import Any

import numpy as np

# Scripts written without spaces between words: each character counts as one word there, so that
# word-count rules never drop Chinese, Japanese or Thai text by construction.
UNSPACED = "\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
UNSPACED_RE = re.compile(f"[{UNSPACED}]")
_WORD_RE = re.compile(r"\w+")
WORD_CJK_RE = re.compile(f"[{UNSPACED}]|[^\\W{UNSPACED}]+")
_SYMBOL_RUN_RE = re.compile(r"[^\w\s]+")
_NO_ALPHA_WORD_RE = re.compile(r"(?<!\w)[\d_]+(?!\w)")
_PARAGRAPH_RE = re.compile(r"\n{2,}")
_NO_LETTER_TOKEN_RE = re.compile(r"(?<!\S)(?:[\d_]|[^\w\s])+(?!\S)")

# Character classes of the per-line counts.
OTHER, SPACE, ALPHA, DIGIT, CODE, PUNCT, NEWLINE = range(7)
N_CLASSES = 7
CODE_SYMBOLS = "{}[]()<>=;_*/\\|&^%$#@~+`"
CODE_LINE_SYMBOL_RATIO = 0.1  # a line with at least this share of code symbols among its visible characters


@functools.cache
def char_classes() -> np.ndarray:
    """The class of every BMP code point (what is above it counts as a letter: emoji are rare in text)."""
    table = np.full(0x10000, OTHER, dtype=np.int64)
    for cp in range(0x10000):
        ch = chr(cp)
        if ch.isspace():
            table[cp] = SPACE
        elif ch.isalpha():
            table[cp] = ALPHA
        elif ch.isdigit() or ch.isnumeric():
            table[cp] = DIGIT
        elif ch in CODE_SYMBOLS:
            table[cp] = CODE
        elif not (ch.isalnum() or ch == "_"):
            table[cp] = PUNCT
    table[ord("\n")] = NEWLINE
    table[ord("_")] = CODE
    return table


class Doc:
    """One document's text and its segmentation, computed at most once and shared by every rule."""

    def __init__(self, text: str, *, url: str = "", license: str = "", meta: dict[str, Any] | None = None) -> None:
        self.text = text
        self.url = url
        self.license = license
        self.meta = meta or {}

    def with_text(self, text: str) -> Doc:
        """The same document after a transform: the segmentation is recomputed only if a later rule asks."""
        doc = Doc(text, url=self.url, license=self.license, meta=self.meta)
        if "language" in self.__dict__:  # language and script do not change when lines are removed
            doc.__dict__["language"] = self.language
        return doc

    # -- lines and paragraphs ------------------------------------------------------------------------------
    @functools.cached_property
    def lines(self) -> list[str]:
        """``text.split("\\n")``: every line, blank ones included."""
        return self.text.split("\n")

    @functools.cached_property
    def nonblank_lines(self) -> list[str]:
        return [ln for ln in self.lines if ln.strip()]

    @functools.cached_property
    def paragraphs(self) -> list[str]:
        return _PARAGRAPH_RE.split(self.text.strip())

    @functools.cached_property
    def line_counts(self) -> np.ndarray:
        """Per line (rows, as ``lines``), the number of characters of each class (columns)."""
        cp = np.frombuffer(self.text.encode("utf-32-le"), dtype=np.uint32)
        cls = char_classes()[np.minimum(cp, 0xFFFF)]
        cls[cp > 0xFFFF] = ALPHA
        newline = cls == NEWLINE
        line_of = np.cumsum(newline) - newline
        n = len(self.lines)
        return np.bincount(line_of * N_CLASSES + cls, minlength=n * N_CLASSES).reshape(n, N_CLASSES)

    @functools.cached_property
    def code_lines(self) -> np.ndarray:
        """Which lines look like code: a high share of code symbols ({}()[]=;_ ...) among visible characters."""
        c = self.line_counts
        visible = c[:, ALPHA] + c[:, DIGIT] + c[:, CODE] + c[:, PUNCT] + c[:, OTHER]
        return (visible > 0) & (c[:, CODE] >= CODE_LINE_SYMBOL_RATIO * np.maximum(visible, 1))

    @functools.cached_property
    def code_fraction(self) -> float:
        """The share of visible characters that sit in code-like lines."""
        c = self.line_counts
        visible = (c[:, ALPHA] + c[:, DIGIT] + c[:, CODE] + c[:, PUNCT] + c[:, OTHER]).astype(np.float64)
        total = visible.sum()
        return float(visible[self.code_lines].sum() / total) if total else 0.0

    @functools.cached_property
    def prose_lines(self) -> list[str]:
        """Non-blank lines that do not look like code."""
        code = self.code_lines
        return [ln for ln, is_code in zip(self.lines, code, strict=True) if not is_code and ln.strip()]

    @functools.cached_property
    def prose(self) -> Doc:
        """The prose lines as a document of their own (the text a prose-only rule judges)."""
        if not self.code_lines.any():
            return self
        return Doc("\n".join(self.prose_lines), url=self.url, license=self.license, meta=self.meta)

    # -- words ---------------------------------------------------------------------------------------------
    @functools.cached_property
    def unspaced_chars(self) -> int:
        return len(UNSPACED_RE.findall(self.text)) if UNSPACED_RE.search(self.text) else 0

    @functools.cached_property
    def spaced(self) -> bool:
        """Whether the text is mostly in scripts that separate words with spaces (word-length rules apply)."""
        return self.unspaced_chars <= 0.3 * max(1, self.n_word_chars)

    @functools.cached_property
    def words(self) -> list[str]:
        """Runs of word characters; each CJK/Thai character is a word of its own."""
        return (WORD_CJK_RE if self.unspaced_chars else _WORD_RE).findall(self.text)

    @functools.cached_property
    def word_lengths(self) -> np.ndarray:
        return np.fromiter(map(len, self.words), dtype=np.int64, count=len(self.words))

    @functools.cached_property
    def n_word_chars(self) -> int:
        c = self.line_counts
        return int(c[:, ALPHA].sum() + c[:, DIGIT].sum())

    @functools.cached_property
    def n_symbols(self) -> int:
        """Runs of punctuation and symbols (a token each, as word tokenizers mostly split them: "...", "--")."""
        return len(_SYMBOL_RUN_RE.findall(self.text))

    @functools.cached_property
    def n_tokens(self) -> int:
        """Words plus punctuation tokens: the denominator of Gopher's per-word ratios."""
        return len(self.words) + self.n_symbols

    @functools.cached_property
    def n_alpha_words(self) -> int:
        """Words with at least one letter (words made only of digits and underscores do not count)."""
        return len(self.words) - len(_NO_ALPHA_WORD_RE.findall(self.text))

    @functools.cached_property
    def ws_alpha_ratio(self) -> float:
        """Share of whitespace-separated words with a letter: the Gopher paper's "words" (no tokenizer)."""
        n = len(self.text.split())
        return 1.0 - len(_NO_LETTER_TOKEN_RE.findall(self.text)) / n if n else 0.0

    @functools.cached_property
    def unique_line_fraction(self) -> float:
        """Share of the non-blank lines' characters that are in distinct lines (1.0: nothing repeats)."""
        lines = self.nonblank_lines
        total = sum(map(len, lines))
        return sum(map(len, set(lines))) / total if total else 1.0

    @functools.cached_property
    def words_lower(self) -> list[str]:
        return self.text.lower().split() if not self.words else [w.lower() for w in self.words]

    @functools.cached_property
    def word_set_lower(self) -> frozenset[str]:
        return frozenset(self.words_lower)

    # -- language ------------------------------------------------------------------------------------------
    @functools.cached_property
    def language(self) -> tuple[str, float]:
        """(ISO 639-1 code, score) from the language module, or ("", 0.0) when none is installed."""
        identify = language_identifier()
        if identify is None or not self.text.strip():
            return "", 0.0
        code, score = identify(self.text)
        return code, float(score)

    @functools.cached_property
    def looks_english(self) -> bool:
        """Mostly ASCII letters (a cheap stand-in for "English" where no language was identified)."""
        sample = [ch for ch in self.text[:5000] if ch.isalpha()]
        return bool(sample) and sum(ch.isascii() for ch in sample) >= 0.9 * len(sample)


@functools.cache
def language_identifier() -> Callable[[str], tuple[str, float]] | None:
    try:
        from pretrain.data.filters.language import identify
    except ImportError:
        return None
    return identify


def fmt(value: float | int | str) -> str:
    """A tripped value as the ``value`` column writes it: numbers with 4 significant digits."""
    if isinstance(value, str):
        return value[:200]
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value)).lower()
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return f"{float(value):.4g}"


@dataclasses.dataclass(frozen=True)
class Rule:
    """One named check: ``judge(doc)`` is None to keep, else the value that tripped it.

    ``name`` is the recipe key of the setting it checks (``gopher_quality.min_doc_words``), so a reason
    in the dropped shard says which key to change.
    """

    name: str
    judge: Callable[[Doc], Any]


@dataclasses.dataclass(frozen=True)
class Transform:
    """Rewrites a kept document: ``apply(doc)`` returns the new text (or None: unchanged) and counts by kind."""

    name: str
    apply: Callable[[Doc], tuple[str | None, dict[str, int]]]


Step = Rule | Transform


def above(value: float, limit: float | None) -> float | None:
    """``value`` when it exceeds ``limit`` (a check that is set), else None."""
    return value if limit is not None and value > limit else None


def below(value: float, limit: float | None) -> float | None:
    return value if limit is not None and value < limit else None
