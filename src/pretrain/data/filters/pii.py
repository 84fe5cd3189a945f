"""PII redaction: e-mail addresses, phone numbers, public IP addresses, card numbers and secrets.

Found text is replaced by a placeholder (``<EMAIL>``, ``<PHONE>``, ``<IP_ADDRESS>``, ``<CREDIT_CARD>``,
``<SECRET>``) and counted per kind; the document is kept. Patterns are strict on purpose, so that
technical text keeps its version numbers, dates, private and loopback addresses (not personal data,
and everywhere in documentation) and ordinary long numbers: card numbers must pass the Luhn check,
IP addresses must be globally routable, phone numbers need a ``+`` prefix or the usual separators.
Each pattern runs only when a cheap pre-check (``@``, a digit, a key prefix) says it could match.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Collection

KINDS = ("email", "phone", "ip_address", "credit_card", "secret")
PLACEHOLDERS = {kind: f"<{kind.upper()}>" for kind in KINDS}

_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]{1,64}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}\b")
_PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]\d{2,4}){1,4}"  # +44 20 7946 0958
    r"|\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}"  # (555) 123-4567
    r"|\d{3}[.-]\d{3}[.-]\d{4})(?![\w])"  # 555-123-4567
)
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.]|\.\d)")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){2,7}(?::|(?::[0-9A-Fa-f]{1,4}){1,6}|[0-9A-Fa-f]{1,4})(?![\w:])")
_DIGIT = re.compile(r"\d")
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_SECRETS = (
    (("PRIVATE KEY",),
     re.compile(r"-----BEGIN (?:[A-Z0-9 ]+ )?PRIVATE KEY-----[\s\S]*?-----END (?:[A-Z0-9 ]+ )?PRIVATE KEY-----")),
    (("AKIA", "ASIA"), re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),
    (("aws_secret", "AWS_SECRET"), re.compile(r"(?i)(?<=aws_secret_access_key)(\s*[:=]\s*[\"']?)[A-Za-z0-9/+=]{40}")),
    (("gh",), re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,255}\b")),
    (("github_pat_",), re.compile(r"\bgithub_pat_[A-Za-z0-9_]{22,255}\b")),
    (("xox",), re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}")),
    (("AIza",), re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b")),
    (("sk_live_", "rk_live_"), re.compile(r"\b[rs]k_live_[0-9A-Za-z]{24,}\b")),
    (("sk-",), re.compile(r"\bsk-(?:proj-)?[A-Za-z0-9_-]{32,}\b")),
    (("eyJ",), re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")),
)


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card(match: re.Match) -> bool:
    digits = re.sub(r"[ -]", "", match.group())
    return 13 <= len(digits) <= 19 and len(set(digits)) > 1 and _luhn(digits)


def _public_ip(match: re.Match) -> bool:
    try:
        return ipaddress.ip_address(match.group()).is_global
    except ValueError:
        return False


def _phone(match: re.Match) -> bool:
    digits = sum(ch.isdigit() for ch in match.group())
    return 7 <= digits <= 15


def _sub(pattern: re.Pattern, text: str, placeholder: str, keep: Callable[[re.Match], bool] | None) -> tuple[str, int]:
    count = 0

    def replace(match: re.Match) -> str:
        nonlocal count
        if keep is not None and not keep(match):
            return match.group()
        count += 1
        prefix = match.group(1) if pattern.groups else ""
        return prefix + placeholder

    return pattern.sub(replace, text), count


def redact(text: str, kinds: Collection[str] = KINDS) -> tuple[str, dict[str, int]]:
    """The text with each PII kind in ``kinds`` replaced by its placeholder, and the count per kind."""
    counts: dict[str, int] = {}

    def apply(kind: str, pattern: re.Pattern, keep=None) -> None:
        nonlocal text
        text, n = _sub(pattern, text, PLACEHOLDERS[kind], keep)
        if n:
            counts[kind] = counts.get(kind, 0) + n

    if "secret" in kinds:  # first: keys may contain digit runs the other patterns would claim
        for needles, pattern in _SECRETS:
            if any(n in text for n in needles):
                apply("secret", pattern)
    if "email" in kinds and "@" in text:
        apply("email", _EMAIL)
    if _DIGIT.search(text):
        if "credit_card" in kinds:
            apply("credit_card", _CARD, _card)
        if "ip_address" in kinds:
            apply("ip_address", _IPV4, _public_ip)
            if ":" in text:
                apply("ip_address", _IPV6, _public_ip)
        if "phone" in kinds:
            apply("phone", _PHONE, _phone)
    return text, counts
