"""Named rule profiles: which rules, in which order, with which settings, for each kind of source.

``web`` (warc, wet), ``prose`` (wikipedia, jsonl, parquet, hf) and ``code`` (code); a source picks one
with ``filter_profile`` (``auto``: by format) and the recipe overrides settings rule by rule under
``filter.profiles.<profile>.<rule>``. Cheap rules run first; a document stops at the first rule it fails.
Language, gibberish, toxicity, URL and PII rules come from their own modules and are left out (and
reported by :func:`missing`) when a module is not installed.
"""

from __future__ import annotations

import importlib
from typing import Any

from pretrain.config import (
    FILTER_PROFILES,
    CodeProfile,
    FilterConfig,
    GibberishSettings,
    LanguageSettings,
    PiiSettings,
    RecipeError,
    SourceConfig,
    TextProfile,
    ToxicSettings,
    UrlSettings,
)
from pretrain.data.filters import c4, code, fineweb, gopher
from pretrain.data.filters.base import Doc, Rule, Step, Transform, above, below

OPTIONAL_MODULES = ("language", "gibberish", "toxic", "pii")


def profile_of(source: SourceConfig) -> str:
    """The profile a source's documents go through: its ``filter_profile``, else by format."""
    return source.profile


def settings(cfg: FilterConfig, profile: str) -> TextProfile | CodeProfile:
    if profile not in FILTER_PROFILES:
        raise RecipeError(f"filter_profile: unknown profile {profile!r}; known: {', '.join(FILTER_PROFILES)}")
    return getattr(cfg.profiles, profile)


def build(cfg: FilterConfig, profile: str) -> list[Step]:
    """The ordered rules and transforms of ``profile`` with the recipe's settings."""
    prof = settings(cfg, profile)
    steps: list[Step] = [
        Rule("min_chars", lambda d: below(len(d.text), cfg.min_chars)),
        Rule("max_chars", lambda d: above(len(d.text), cfg.max_chars)),
        Rule("min_words", lambda d: below(len(d.words), cfg.min_words)),
    ]
    if isinstance(prof, CodeProfile):
        steps += code.license_rules(prof.licenses) if prof.licenses.enabled else []
        steps += code.rules(prof.code) if prof.code.enabled else []
        steps += _pii(prof.pii)
        return steps
    steps += _urls(prof.urls, f"filter.profiles.{profile}.urls")
    steps += _language(prof.language)
    if prof.gopher_repetition.enabled:
        steps += gopher.repetition_rules(prof.gopher_repetition)
    if prof.gopher_quality.enabled:
        steps += gopher.quality_rules(prof.gopher_quality)
    if prof.c4.enabled:
        steps += c4.rules(prof.c4)
    if prof.fineweb.enabled:
        steps += fineweb.rules(prof.fineweb)
    steps += _gibberish(prof.gibberish)
    steps += _toxic(prof.toxic, f"filter.profiles.{profile}.toxic")
    steps += _pii(prof.pii)
    return steps


def wants_language(cfg: FilterConfig, profile: str) -> bool:
    """Whether documents of ``profile`` get their language and score in ``meta``."""
    prof = settings(cfg, profile)
    return isinstance(prof, TextProfile) and prof.language.enabled and _module("language") is not None


def missing() -> list[str]:
    """The optional rule modules that are not installed (their rules are left out)."""
    return [name for name in OPTIONAL_MODULES if _module(name) is None]


def _module(name: str) -> Any:
    try:
        return importlib.import_module(f"pretrain.data.filters.{name}")
    except ImportError:
        return None


def _language(cfg: LanguageSettings) -> list[Step]:
    if not cfg.enabled or not cfg.languages or _module("language") is None:
        return []
    keep = frozenset(cfg.languages)
    return [Rule("language.languages", lambda d: None if d.language[0] in keep else d.language[0] or "unknown")]


def _gibberish(cfg: GibberishSettings) -> list[Step]:
    mod = _module("gibberish")
    if not cfg.enabled or mod is None:
        return []
    has_language = _module("language") is not None
    return [Rule("gibberish.max_score", lambda d: above(
        mod.gibberish_score(d.text, d.language if has_language else None), cfg.max_score))]


def _toxic(cfg: ToxicSettings, key: str) -> list[Step]:
    mod = _module("toxic")
    if not cfg.enabled or mod is None:
        return []

    def read(spec: str, where: str) -> frozenset[str]:
        try:
            return mod.load_words(spec)
        except (OSError, ValueError) as err:
            raise RecipeError(f"{key}.{where}: cannot read {spec!r}: {err}") from None

    # the main list for its languages (every language when none is named), plus each per-language list
    base = read(cfg.wordlist, "wordlist")
    default = frozenset() if cfg.languages else base
    lists: dict[str, frozenset[str]] = dict.fromkeys(cfg.languages, base)
    for lang, spec in sorted(cfg.wordlists.items()):
        lists[lang] = lists.get(lang, default) | read(spec, f"wordlists.{lang}")

    def wordlist_of(d: Doc) -> frozenset[str]:
        code_, _ = d.language
        if not code_ and d.looks_english:  # no language identifier installed
            code_ = "en"
        return lists.get(code_, default)

    def judge(d: Doc) -> float | None:
        wordlist = wordlist_of(d)
        if not wordlist:
            return None
        return above(mod.toxic_fraction(mod.words_of(d.text), wordlist), cfg.max_fraction)
    steps: list[Step] = [Rule("toxic.max_fraction", judge)]
    if cfg.classifier:
        steps.append(_classifier(cfg, key))
    return steps


def _classifier(cfg: ToxicSettings, key: str) -> Rule:
    """The recipe's ``module:function`` (text -> score in [0, 1]) as a rule; imported now, so a typo fails early."""
    module_name, _, name = str(cfg.classifier).partition(":")
    try:
        score = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as err:
        raise RecipeError(f"{key}.classifier: cannot import {cfg.classifier!r}: {err}") from None
    if not callable(score):
        raise RecipeError(f"{key}.classifier: {cfg.classifier!r} is not callable")
    languages = frozenset(cfg.classifier_languages)

    def judge(d: Doc) -> float | None:
        if languages and d.language[0] not in languages:
            return None
        return above(float(score(d.text)), cfg.max_classifier_score)
    return Rule("toxic.classifier", judge)


def _urls(cfg: UrlSettings, key: str) -> list[Step]:
    mod = _module("toxic")
    if not cfg.enabled or mod is None or not (cfg.blocked_domains or cfg.blocked_domains_file):
        return []
    domains = {d.strip().lower().removeprefix("*.").rstrip(".") for d in cfg.blocked_domains if d.strip()}
    if cfg.blocked_domains_file:
        try:
            domains |= mod.load_domains(cfg.blocked_domains_file)
        except (OSError, ValueError) as err:
            raise RecipeError(f"{key}.blocked_domains_file: cannot read "
                              f"{cfg.blocked_domains_file!r}: {err}") from None
    blocked = frozenset(domains)
    return [Rule("urls.blocked_domains", lambda d: mod.host(d.url) if mod.domain_blocked(d.url, blocked) else None)]


def _pii(cfg: PiiSettings) -> list[Step]:
    mod = _module("pii")
    if not cfg.enabled or mod is None:
        return []
    kinds = tuple(cfg.kinds if cfg.kinds is not None else mod.KINDS)

    def redact(d: Doc) -> tuple[str | None, dict[str, int]]:
        text, counts = mod.redact(d.text, kinds)
        return (text if counts else None), counts
    return [Transform("pii", redact)]
