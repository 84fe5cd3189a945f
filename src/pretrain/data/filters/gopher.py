"""Gopher quality and repetition rules (Rae et al. 2021, "Scaling Language Models", appendix A1).

``published`` is datatrove 0.10's GopherQualityFilter / GopherRepetitionFilter at the same thresholds:
words as spaCy's English tokenizer cuts them (``base.spacy_words``, one regular expression), punctuation-
only words left out of the word count and average length, lines of ``splitlines()`` / runs of newlines,
and datatrove's left-to-right walk for duplicated n-grams (a repeat skips the next n - 1 n-grams).

``default`` reads words as runs of word characters and corrects three things:

- the symbol (``#``) ratio and the alphabetic-word ratio are judged over prose lines, not code-like
  lines: a documentation page with code snippets is not "symbol soup";
- duplicate lines ignore blank lines (whitespace-only lines are layout, not repeated content);
- duplicated n-gram characters are every character covered by a repeated n-gram (the paper's reading).

Both variants protect scripts without spaces (CJK, Thai): each character is a word, average word
length is not judged, and the English stop-word rule applies to English documents only.
N-gram repetition is vectorized: one hash per word, n-gram hashes by a rolling product in numpy,
counts by ``np.unique``; per-document results are cached on the document and shared by the rules.
"""

from __future__ import annotations

import re

import numpy as np

from pretrain.config import GopherQualitySettings, GopherRepetitionSettings
from pretrain.data.filters.base import Doc, Rule, above, below

_MIX = np.uint64(0x9E3779B97F4A7C15)


def quality_rules(cfg: GopherQualitySettings) -> list[Rule]:
    published = cfg.variant == "published"
    stop_words = frozenset(cfg.stop_words)
    rules: list[Rule] = []

    def add(name: str, judge) -> None:
        rules.append(Rule(f"gopher_quality.{name}", judge))

    if published:
        _published_quality(cfg, add)
        return rules
    if cfg.min_doc_words is not None:
        add("min_doc_words", lambda d: below(len(d.words), cfg.min_doc_words))
    if cfg.max_doc_words is not None:
        add("max_doc_words", lambda d: above(len(d.words), cfg.max_doc_words))
    if cfg.min_avg_word_length is not None:
        add("min_avg_word_length", lambda d: below(_avg_word_length(d), cfg.min_avg_word_length) if d.spaced else None)
    if cfg.max_avg_word_length is not None:
        add("max_avg_word_length", lambda d: above(_avg_word_length(d), cfg.max_avg_word_length) if d.spaced else None)
    if cfg.max_symbol_word_ratio is not None:
        def symbols(d: Doc) -> float | None:
            p = d.prose
            n = max(1, p.n_tokens)
            return above(max(p.text.count("#"), p.text.count("...") + p.text.count("…")) / n,
                         cfg.max_symbol_word_ratio)
        add("max_symbol_word_ratio", symbols)
    if cfg.max_bullet_lines_ratio is not None:
        add("max_bullet_lines_ratio", lambda d: above(
            sum(ln.lstrip().startswith(("•", "-")) for ln in d.lines) / len(d.lines), cfg.max_bullet_lines_ratio))
    if cfg.max_ellipsis_lines_ratio is not None:
        add("max_ellipsis_lines_ratio", lambda d: above(
            sum(ln.rstrip().endswith(("...", "…")) for ln in d.lines) / len(d.lines), cfg.max_ellipsis_lines_ratio))
    if cfg.min_alpha_words_ratio is not None:
        def alpha(d: Doc) -> float | None:
            if not d.prose_lines:
                return below(d.n_alpha_words / d.n_tokens, cfg.min_alpha_words_ratio) if d.n_tokens else None
            return below(d.prose.ws_alpha_ratio, cfg.min_alpha_words_ratio)
        add("min_alpha_words_ratio", alpha)
    if cfg.min_stop_words is not None:
        def stop(d: Doc) -> int | None:
            if not (d.spaced and _stop_words_apply(d, cfg.stop_words_languages)):
                return None
            return below(len(stop_words & d.word_set_lower), cfg.min_stop_words)
        add("min_stop_words", stop)
    return rules


def _published_quality(cfg: GopherQualitySettings, add) -> None:
    """datatrove 0.10's GopherQualityFilter: spaCy-like words, punctuation-only words left out of the counts and
    the average length, every line of ``splitlines()``; case-sensitive stop words. Scripts without spaces keep
    one word per character (never dropped for their word count or length)."""
    stop_words = frozenset(cfg.stop_words)
    if cfg.min_doc_words is not None:
        add("min_doc_words", lambda d: below(d.spacy_counts[1], cfg.min_doc_words))
    if cfg.max_doc_words is not None:
        add("max_doc_words", lambda d: above(d.spacy_counts[1], cfg.max_doc_words))

    def avg(d: Doc) -> float | None:
        _, n, chars, _ = d.spacy_counts
        return chars / n if n and d.spaced else None
    if cfg.min_avg_word_length is not None:
        add("min_avg_word_length", lambda d: below(v, cfg.min_avg_word_length) if (v := avg(d)) is not None else None)
    if cfg.max_avg_word_length is not None:
        add("max_avg_word_length", lambda d: above(v, cfg.max_avg_word_length) if (v := avg(d)) is not None else None)
    if cfg.max_symbol_word_ratio is not None:
        def symbols(d: Doc) -> float | None:
            n = d.spacy_counts[0]
            if not n:
                return None
            return above(max(d.text.count("#"), d.text.count("...") + d.text.count("…")) / n,
                         cfg.max_symbol_word_ratio)
        add("max_symbol_word_ratio", symbols)

    if cfg.max_bullet_lines_ratio is not None:
        add("max_bullet_lines_ratio", lambda d: above(r, cfg.max_bullet_lines_ratio)
            if (r := _line_share(d, _BULLET_LINE_RE, _is_bullet)) is not None else None)
    if cfg.max_ellipsis_lines_ratio is not None:
        add("max_ellipsis_lines_ratio", lambda d: above(r, cfg.max_ellipsis_lines_ratio)
            if (r := _line_share(d, _ELLIPSIS_LINE_RE, _is_ellipsis)) is not None else None)
    if cfg.min_alpha_words_ratio is not None:
        add("min_alpha_words_ratio", lambda d: below(c[3] / c[0], cfg.min_alpha_words_ratio)
            if (c := d.spacy_counts)[0] else None)
    if cfg.min_stop_words is not None:
        def stop(d: Doc) -> int | None:
            if not (d.spaced and _stop_words_apply(d, cfg.stop_words_languages)):
                return None
            return below(len(stop_words.intersection(d.spacy_words)), cfg.min_stop_words)
        add("min_stop_words", stop)


# Lines as ``str.splitlines`` cuts them: "\n" alone unless the text holds another of its separators.
_OTHER_LINE_BREAKS = ("\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029")
_BULLET_LINE_RE = re.compile(r"\n[^\S\n]*[•-]")  # over "\n" + text: the matcher jumps to each newline
_ELLIPSIS_LINE_RE = re.compile(r"(?:\.\.\.|…)[^\S\n]*$", re.MULTILINE)


def _is_bullet(line: str) -> bool:
    return line.lstrip().startswith(("•", "-"))


def _is_ellipsis(line: str) -> bool:
    return line.rstrip().endswith(("...", "…"))


def _line_share(d: Doc, pattern: re.Pattern, test) -> float | None:
    """Share of ``splitlines()`` lines that match: one regex count over the text (a loop if it has rare breaks)."""
    text = d.text
    if not text:
        return None
    if any(b in text for b in _OTHER_LINE_BREAKS):
        lines = text.splitlines()
        return sum(map(test, lines)) / len(lines) if lines else None
    n = text.count("\n") + (not text.endswith("\n"))
    return len(pattern.findall("\n" + text if pattern is _BULLET_LINE_RE else text)) / n


def _avg_word_length(d: Doc) -> float:
    return float(d.word_lengths.mean()) if len(d.words) else 0.0


def _stop_words_apply(d: Doc, languages: list[str]) -> bool:
    """Whether the stop-word list fits the document: its identified language when known already (the language
    rule runs first), else English by mostly-ASCII letters (identifying a language just for this costs more)."""
    if not languages:
        return True
    code, _ = d.language if "language" in d.__dict__ else ("", 0.0)
    if code:
        return code in languages
    return "en" in languages and d.looks_english


# -- repetition -----------------------------------------------------------------------------------------------
_LINE_RUNS_RE = re.compile("\n+")


def repetition_rules(cfg: GopherRepetitionSettings) -> list[Rule]:
    published = cfg.variant == "published"
    rules: list[Rule] = []

    def add(name: str, judge) -> None:
        rules.append(Rule(f"gopher_repetition.{name}", judge))

    def paragraphs(d: Doc) -> tuple[float, float]:
        if "_dup_paragraphs" not in d.__dict__:
            dups, chars = _duplicates(d.paragraphs)
            d.__dict__["_dup_paragraphs"] = dups / max(1, len(d.paragraphs)), chars / max(1, len(d.text))
        return d.__dict__["_dup_paragraphs"]

    def lines(d: Doc) -> tuple[float, float]:
        key = f"_dup_lines_{cfg.variant}"
        if key not in d.__dict__:
            # datatrove splits on runs of newlines (a leading or trailing empty string stays an item)
            items = _LINE_RUNS_RE.split(d.text) if published else d.nonblank_lines
            dups, chars = _duplicates(items)
            d.__dict__[key] = dups / max(1, len(items)), chars / max(1, len(d.text))
        return d.__dict__[key]

    def judged(d: Doc) -> bool:
        return published or not exempt(d, cfg.exempt_min_distinct_words, cfg.exempt_min_unique_fraction)

    if cfg.max_dup_para_frac is not None:
        add("max_dup_para_frac", lambda d: above(paragraphs(d)[0], cfg.max_dup_para_frac) if judged(d) else None)
    if cfg.max_dup_para_char_frac is not None:
        add("max_dup_para_char_frac", lambda d: above(paragraphs(d)[1], cfg.max_dup_para_char_frac)
            if judged(d) else None)
    if cfg.max_dup_line_frac is not None:
        add("max_dup_line_frac", lambda d: above(lines(d)[0], cfg.max_dup_line_frac) if judged(d) else None)
    if cfg.max_dup_line_char_frac is not None:
        add("max_dup_line_char_frac", lambda d: above(lines(d)[1], cfg.max_dup_line_char_frac)
            if judged(d) else None)
    for n, limit in sorted(cfg.max_top_ngram_char_frac.items()):
        add(f"max_top_ngram_char_frac.{n}", lambda d, n=n, limit=limit: above(
            _top_ngram_chars(_Words.of(d, published), n, published) / max(1, len(d.text)), limit))
    for n, limit in sorted(cfg.max_dup_ngram_char_frac.items()):
        if published:
            add(f"max_dup_ngram_char_frac.{n}", lambda d, n=n, limit=limit: _dup_ngram_greedy(
                _Words.of(d, True), n, limit * max(1, len(d.text)), max(1, len(d.text))))
        else:
            add(f"max_dup_ngram_char_frac.{n}", lambda d, n=n, limit=limit: above(_dup_ngram_chars(
                _Words.of(d, False), n) / max(1, len(d.text)), limit) if judged(d) else None)
    return rules


def exempt(d: Doc, min_distinct_words: int, min_unique_fraction: float) -> bool:
    """A page with a real vocabulary whose distinct lines still hold a fair share of it: repeats are structure."""
    return len(d.word_set_lower) >= min_distinct_words and d.unique_line_fraction >= min_unique_fraction


def _duplicates(items: list[str]) -> tuple[int, int]:
    """(repeated items, characters in repeats): every occurrence after the first counts."""
    unique = set(items)
    return len(items) - len(unique), sum(map(len, items)) - sum(map(len, unique))


class _Words:
    """A document's words for the n-gram rules, hashed once: n-gram hashes and character spans by numpy."""

    def __init__(self, words: list[str]) -> None:
        self.n = len(words)
        self.hashes = {1: np.fromiter(map(hash, words), dtype=np.int64, count=self.n).view(np.uint64)}
        self.prefix = np.zeros(self.n + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, words), dtype=np.int64, count=self.n), out=self.prefix[1:])
        self.unique: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @staticmethod
    def of(d: Doc, published: bool) -> _Words:
        key = "_ngram_words_published" if published else "_ngram_words"
        if key not in d.__dict__:
            d.__dict__[key] = _Words(d.spacy_words if published else d.words)
        return d.__dict__[key]

    def ngrams(self, n: int) -> np.ndarray:
        """A 64-bit hash of every n-gram (rolling: h_n[i] = h_{n-1}[i] * MIX + w[i+n-1])."""
        if n not in self.hashes:
            prev = self.ngrams(n - 1)
            self.hashes[n] = prev[:-1] * _MIX + self.hashes[1][n - 1:] if len(prev) > 1 else np.empty(0, np.uint64)
        return self.hashes[n]

    def first_seen(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(index of the first occurrence of each n-gram's value, per n-gram; counts per distinct value)."""
        if n not in self.unique:
            _, first, inverse, counts = np.unique(self.ngrams(n), return_index=True, return_inverse=True,
                                                  return_counts=True)
            self.unique[n] = first[inverse], counts
        return self.unique[n]

    def chars(self, n: int) -> np.ndarray:
        """Characters of each n-gram's words (spaces not counted)."""
        return self.prefix[n:] - self.prefix[:-n]


def _top_ngram_chars(w: _Words, n: int, published: bool) -> int:
    """Characters of the most frequent n-gram (joined by spaces) times its count; ties: the first seen.

    datatrove also counts an n-gram seen once (so a very short text trips it); ``default`` needs a repeat.
    """
    if w.n < n:
        return 0
    first, counts = w.first_seen(n)
    top = int(counts.max())
    if top < 2 and not published:
        return 0
    start = _first_top(first, top)
    return int(w.prefix[start + n] - w.prefix[start] + n - 1) * top


def _first_top(first: np.ndarray, top: int) -> int:
    """The earliest n-gram whose value occurs ``top`` times."""
    occurrences = np.bincount(first, minlength=len(first))  # per first index: how many n-grams share it
    return int(np.flatnonzero(occurrences == top)[0])


def _dup_ngram_chars(w: _Words, n: int) -> int:
    """Characters of the words covered by n-grams that occurred earlier in the document (the paper's reading)."""
    if w.n - n + 1 < 2:
        return 0
    first, _ = w.first_seen(n)
    starts = np.flatnonzero(first < np.arange(len(first)))
    if not len(starts):
        return 0
    delta = np.zeros(w.n + 1, dtype=np.int64)
    np.add.at(delta, starts, 1)
    np.add.at(delta, starts + n, -1)
    covered = np.cumsum(delta[:-1]) > 0
    lengths = np.diff(w.prefix)
    return int(lengths[covered].sum())


def _dup_ngram_greedy(w: _Words, n: int, limit_chars: float, text_chars: int) -> float | None:
    """datatrove's duplicated n-gram characters (the fraction when over ``limit_chars``, else None).

    datatrove walks the n-grams left to right: a repeat counts its characters and skips the next ``n - 1``
    n-grams, which are then never recorded as seen. That count is at most the characters covered by repeated
    n-grams (vectorized, below), so the walk runs only for the few documents whose coverage is over the limit,
    and starts at the first repeat (every n-gram before it is a first occurrence).
    """
    if w.n - n + 1 < 2:
        return None
    first, _ = w.first_seen(n)
    repeats = np.flatnonzero(first < np.arange(len(first)))
    if not len(repeats) or _dup_ngram_chars(w, n) <= limit_chars:
        return None
    hashes = w.ngrams(n).tolist()
    chars = w.chars(n).tolist()
    start = int(repeats[0])
    seen = set(hashes[:start])
    total, i, m = 0, start, len(hashes)
    while i < m:
        h = hashes[i]
        if h in seen:
            total += chars[i]
            i += n
        else:
            seen.add(h)
            i += 1
    return total / text_chars if total > limit_chars else None
