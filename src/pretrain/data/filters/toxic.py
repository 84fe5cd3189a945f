"""Toxic content by word lists, and URL block-lists (domains whose owners opted out of crawling).

The built-in list is the one ``better-profanity`` ships (English). A recipe can name its own list
(a local path or an ``s3://`` URL, one word or phrase per line, ``#`` comments). A document's toxic
fraction is the share of its words that are listed; phrases count once per occurrence. A hook for a
classifier fits the same rule: anything that maps a text to a fraction.
"""

from __future__ import annotations

import functools
import re
from urllib.parse import urlsplit

BUILTIN = "builtin"
# Entries of better-profanity's list that are ordinary, medical or identity words (or, like "len", code):
# counting them would drop cooking pages, health pages, LGBTQ pages and Python documentation, the
# known failure of block-lists (C4's removed LGBTQ content). They are left out of the built-in list.
NEUTRAL = frozenset({
    "len", "fat", "god", "hell", "kill", "ugly", "pot", "weed", "womb", "hemp", "oral", "nude", "racy", "maxi",
    "pawn", "rum", "loin", "ovum", "hiv", "cipa", "omg", "lmao", "wad", "whiz", "damn", "crap", "jerk", "lust",
    "pee", "poop", "prig", "lech", "hump", "thug", "toke", "uzi", "meth", "pcp", "gay", "gays", "homo", "lesbian",
    "lesbians", "gae", "gai", "gey", "ghay", "ghey", "suck", "sucks", "teat", "knob", "muff", "sex", "sexy", "fart",
    "lube", "pms", "tush", "wang", "xx", "yury", "hoar", "dink", "dong", "titi", "mams", "nad", "nads", "rump",
    "shag", "smut", "bdsm", "dyke", "queer", "transsexual", "bisexual", "breast", "breasts", "nipple", "nipples",
    "vagina", "penis", "testicle", "testicles", "scrotum", "sperm", "semen", "anal", "anus", "urine", "pubic",
    "menstruation", "ejaculation", "erection", "orgasm", "intercourse", "condom", "abortion", "crack", "dope",
    "drunk", "ecstasy", "stoned", "heroin", "junkie", "opiate", "kinky", "naked", "nudity", "prostitute", "stripper",
    "murder", "hitler", "nazi", "klan", "kkk", "seduce", "sadist", "sadism", "virgin",
})
_WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)?")


@functools.lru_cache(maxsize=8)
def load_words(spec: str = BUILTIN) -> frozenset[str]:
    """The lowercased words and phrases of a list: ``builtin`` (better-profanity's, less ``NEUTRAL``) or a path /
    s3:// URL (taken as it is)."""
    if spec == BUILTIN:
        from importlib import resources

        text = (resources.files("better_profanity") / "profanity_wordlist.txt").read_text(encoding="utf-8")
        entries = {line.strip().lower() for line in text.splitlines() if line.strip()}
        return frozenset(entries - NEUTRAL)
    else:
        from pretrain import storage

        text = storage.read_text(spec)
    lines = (line.split("#", 1)[0].strip().lower() for line in text.splitlines())
    return frozenset(line for line in lines if line)


def words_of(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def toxic_fraction(words: list[str], wordlist: frozenset[str]) -> float:
    """Share of ``words`` (lowercased) that are listed; a listed phrase counts as one hit per occurrence."""
    if not words:
        return 0.0
    hits = sum(1 for w in words if w in wordlist)
    starts, lengths = _phrases(wordlist)
    if starts:
        for i, word in enumerate(words):
            if word in starts:
                hits += sum(1 for k in lengths if " ".join(words[i:i + k]) in wordlist)
    return hits / len(words)


@functools.lru_cache(maxsize=8)
def _phrases(wordlist: frozenset[str]) -> tuple[frozenset[str], tuple[int, ...]]:
    """First words and word counts of the list's phrases: only windows starting there are looked up."""
    phrases = [entry.split() for entry in wordlist if " " in entry]
    return frozenset(p[0] for p in phrases), tuple(sorted({len(p) for p in phrases}))


def host(url: str) -> str:
    try:
        return (urlsplit(url if "//" in url else f"//{url}").hostname or "").lower().rstrip(".")
    except ValueError:
        return ""


def domain_blocked(url: str, domains: frozenset[str]) -> bool:
    """True when the URL's host or any parent domain of it is listed (``example.com`` blocks ``a.example.com``)."""
    name = host(url)
    while name:
        if name in domains:
            return True
        _, _, name = name.partition(".")
    return False


def load_domains(spec: str) -> frozenset[str]:
    """A domain list file (path or s3:// URL): one domain per line, ``#`` comments, ``*.`` prefixes allowed."""
    from pretrain import storage

    lines = (line.split("#", 1)[0].strip().lower() for line in storage.read_text(spec).splitlines())
    return frozenset(line.removeprefix("*.").rstrip(".") for line in lines if line)
