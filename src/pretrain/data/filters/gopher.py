"""Gopher quality and repetition rules (Rae et al. 2021, "Scaling Language Models", appendix A1).

Semantics follow datatrove 0.10's GopherQualityFilter / GopherRepetitionFilter at the same thresholds,
with words as runs of word characters and every punctuation character a token of its own (what a
word tokenizer yields, without one). Two corrections, in the ``default`` variant only:

- the symbol (``#``) ratio and the alphabetic-word ratio are judged over prose lines, not code-like
  lines: a documentation page with code snippets is not "symbol soup";
- duplicate lines ignore blank lines (whitespace-only lines are layout, not repeated content).

Both variants protect scripts without spaces (CJK, Thai): each character is a word, average word
length is not judged, and the English stop-word rule applies to English documents only.
N-gram repetition is vectorized: one hash per word, n-gram hashes by a rolling product in numpy.
"""

from __future__ import annotations

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
            p = d if published else d.prose
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
            if published or not d.prose_lines:
                return below(d.n_alpha_words / d.n_tokens, cfg.min_alpha_words_ratio) if d.n_tokens else None
            return below(d.prose.ws_alpha_ratio, cfg.min_alpha_words_ratio)
        add("min_alpha_words_ratio", alpha)
    if cfg.min_stop_words is not None:
        def stop(d: Doc) -> int | None:
            if not (d.spaced and _stop_words_apply(d, cfg.stop_words_languages)):
                return None
            found = stop_words & (frozenset(d.words) if published else d.word_set_lower)
            return below(len(found), cfg.min_stop_words)
        add("min_stop_words", stop)
    return rules


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
def repetition_rules(cfg: GopherRepetitionSettings) -> list[Rule]:
    published = cfg.variant == "published"
    rules: list[Rule] = []

    def add(name: str, judge) -> None:
        rules.append(Rule(f"gopher_repetition.{name}", judge))

    def paragraphs(d: Doc) -> tuple[float, float]:
        dups, chars = _duplicates(d.paragraphs)
        return dups / max(1, len(d.paragraphs)), chars / max(1, len(d.text))

    def lines(d: Doc) -> tuple[float, float]:
        items = [ln for ln in d.lines if ln] if published else [ln for ln in d.nonblank_lines]
        dups, chars = _duplicates(items)
        return dups / max(1, len(items)), chars / max(1, len(d.text))

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
        add(f"max_top_ngram_char_frac.{n}", lambda d, n=n, limit=limit: above(_top_ngram_chars(d, n, published) / max(
            1, len(d.text)), limit))
    for n, limit in sorted(cfg.max_dup_ngram_char_frac.items()):
        add(f"max_dup_ngram_char_frac.{n}", lambda d, n=n, limit=limit: above(_dup_ngram_chars(d, n) / max(
            1, len(d.text)), limit) if judged(d) else None)
    return rules


def exempt(d: Doc, min_distinct_words: int, min_unique_fraction: float) -> bool:
    """A page with a real vocabulary whose distinct lines still hold a fair share of it: repeats are structure."""
    return len(d.word_set_lower) >= min_distinct_words and d.unique_line_fraction >= min_unique_fraction


def _duplicates(items: list[str]) -> tuple[int, int]:
    """(repeated items, characters in repeats): every occurrence after the first counts."""
    unique = set(items)
    return len(items) - len(unique), sum(map(len, items)) - sum(map(len, unique))


def _word_hashes(d: Doc) -> np.ndarray:
    cache = d.__dict__.setdefault("_ngram_hashes", {})
    if 1 not in cache:
        cache[1] = np.fromiter(map(hash, d.words), dtype=np.int64, count=len(d.words)).view(np.uint64)
    return cache[1]


def _ngram_hashes(d: Doc, n: int) -> np.ndarray:
    """A 64-bit hash of every n-gram of words (rolling: h_n[i] = h_{n-1}[i] * MIX + w[i+n-1])."""
    cache = d.__dict__.setdefault("_ngram_hashes", {})
    if n not in cache:
        words = _word_hashes(d)
        prev = _ngram_hashes(d, n - 1)
        cache[n] = prev[:-1] * _MIX + words[n - 1:] if len(prev) > 1 else np.empty(0, np.uint64)
    return cache[n]


def _prefix_lengths(d: Doc) -> np.ndarray:
    if "_prefix_lengths" not in d.__dict__:
        d.__dict__["_prefix_lengths"] = np.concatenate([[0], np.cumsum(d.word_lengths)])
    return d.__dict__["_prefix_lengths"]


def _top_ngram_chars(d: Doc, n: int, published: bool) -> int:
    """Characters of the most frequent n-gram (joined by spaces) times its count; ties: the first seen.

    datatrove also counts an n-gram seen once (so a very short text trips it); ``default`` needs a repeat.
    """
    h = _ngram_hashes(d, n)
    if not len(h):
        return 0
    _, first, counts = np.unique(h, return_index=True, return_counts=True)
    top = counts.max()
    if top < 2 and not published:
        return 0
    start = int(first[counts == top].min())
    return _span(d, start, n) * int(top)


def _span(d: Doc, start: int, n: int) -> int:
    pre = _prefix_lengths(d)
    return int(pre[start + n] - pre[start]) + n - 1


def _dup_ngram_chars(d: Doc, n: int) -> int:
    """Characters of the words covered by n-grams that occurred earlier in the document."""
    h = _ngram_hashes(d, n)
    if len(h) < 2:
        return 0
    _, first, inverse = np.unique(h, return_index=True, return_inverse=True)
    starts = np.flatnonzero(first[inverse] < np.arange(len(h)))
    if not len(starts):
        return 0
    delta = np.zeros(len(d.words) + 1, dtype=np.int64)
    np.add.at(delta, starts, 1)
    np.add.at(delta, starts + n, -1)
    covered = np.cumsum(delta[:-1]) > 0
    return int(d.word_lengths[covered].sum())
