"""Near copies as they occur in the wild, for dedup tests and benchmarks: word edits, a cut tail, renamed code."""

from __future__ import annotations

import random
import re

_KEYWORDS = {"self", "return", "import", "from", "class", "def", "None", "True", "False"}


def word_edits(text: str, rng: random.Random, fraction: float) -> str:
    """Replace ``fraction`` of the words (whitespace-separated tokens; the whitespace stays as it was)."""
    parts = re.split(r"(\s+)", text)
    words = [i for i, p in enumerate(parts) if p and not p.isspace()]
    vocab = ["alpha", "beta", "gamma", "value", "system", "object", "number", "method", "result", "thing"]
    for i in rng.sample(words, max(1, round(len(words) * fraction))):
        parts[i] = rng.choice(vocab)
    return "".join(parts)


def truncate(text: str, fraction: float = 0.1) -> str:
    """The text without its last ``fraction``, cut at a word boundary."""
    cut = int(len(text) * (1 - fraction))
    return text[: text.rfind(" ", 0, cut) if " " in text[:cut] else cut]


def rename_identifiers(source: str, rng: random.Random) -> str:
    """The same code with two or three of its most used identifiers renamed, as a fork would."""
    names = sorted({n for n in re.findall(r"\b[a-z_][a-z0-9_]{3,}\b", source) if n not in _KEYWORDS})
    counts = {n: len(re.findall(rf"\b{n}\b", source)) for n in names}
    for name in sorted(names, key=lambda n: (-counts[n], n))[: rng.randint(2, 3)]:
        source = re.sub(rf"\b{name}\b", name[::-1] + "_x", source)
    return source
