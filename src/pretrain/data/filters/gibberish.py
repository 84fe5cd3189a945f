"""Gibberish: random strings and keyboard mashing, in any language.

Two signals, the larger wins:
- implausible words: in alphabetic scripts (Latin, Greek, Cyrillic), words without vowels, with
  long consonant runs, or with chaotic letter case, weighted by their letters (acronyms and short
  words are exempt; scripts without vowels, such as CJK or Arabic, are never judged this way);
- the language identifier's own verdict ``zxx`` ("no linguistic content") and its probability.
"""

from __future__ import annotations

import collections
import itertools
import re

from pretrain.data.filters.language import NO_LANGUAGE, identify

HEAD_CHARS = 20_000
VOWELS = frozenset("aeiouyàáâãäåæèéêëìíîïòóôõöøùúûüýÿāăąēĕėęěīįıōőœūůűųǎǐǒǔ"
                   "аеёиоуыэюяіїєαεηιουωάέήίόύώ")
MAX_CONSONANT_RUN = 5
_LETTERS = re.compile(r"[^\W\d_]+")
_ALPHABETIC_END = 0x0530  # Latin, Greek and Cyrillic letters all sit below the Armenian block


def implausible(word: str) -> bool:
    """A word no natural language in an alphabetic script would write."""
    n = len(word)
    if n < 4 or ord(word[0]) >= _ALPHABETIC_END or (word.isupper() and n <= 6):
        return False
    low = word.lower()
    vowels = run = longest = 0
    for ch in low:
        if ch in VOWELS:
            vowels += 1
            run = 0
        else:
            run += 1
            longest = max(longest, run)
    if vowels == 0 or longest > MAX_CONSONANT_RUN or (n >= 8 and vowels < 0.15 * n):
        return True
    switches = sum(a.islower() != b.islower() for a, b in itertools.pairwise(word[1:]))  # not the capital
    return switches >= 3


_VERDICTS: dict[str, bool] = {}  # words repeat (Zipf): each distinct one is judged once, in a bounded memo
_VERDICTS_SIZE = 1 << 16


def clear_memo() -> None:
    """Forget memoized word verdicts (benchmarks call it so every pass starts cold)."""
    _VERDICTS.clear()


def word_score(text: str) -> float:
    """Share of letters (in alphabetic scripts) that sit in implausible words."""
    words = collections.Counter(_LETTERS.findall(text[:HEAD_CHARS]))
    letters = bad = 0
    memo = _VERDICTS
    for word, count in words.items():
        n = len(word) * count
        letters += n
        if len(word) < 4:
            continue
        verdict = memo.get(word)
        if verdict is None:
            verdict = implausible(word)
            if len(memo) >= _VERDICTS_SIZE:
                memo.clear()
            memo[word] = verdict
        if verdict:
            bad += n
    return bad / letters if letters else 0.0


def gibberish_score(text: str, language: tuple[str, float] | None = None) -> float:
    """0 for natural text, towards 1 for random characters; pass ``identify(text)`` if already known."""
    lang, prob = language if language is not None else identify(text)
    return max(word_score(text), prob if lang == NO_LANGUAGE else 0.0)
