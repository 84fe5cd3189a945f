"""HTML payloads -> text: the charset first, then the main-content text.

Main content: Resiliparse extracts the text with the boilerplate skipped by a compact list of CSS
selectors (navigation, sidebars, footers, cookie banners, ads, hidden elements; matched by tag,
ARIA role and class/id names, as trafilatura's own boilerplate lists do). On large pages this costs
about 1.2x a plain extraction, where Resiliparse's built-in main-content heuristics cost about 2x
(and drop some inline separators); they stay selectable with ``main_content_rules: resiliparse``.

Charset: valid UTF-8 always decodes as UTF-8 (a page that is valid UTF-8 with non-ASCII text is
practically never Latin-1, whatever it declares); otherwise the HTTP header's charset, then the
HTML meta tag, then detection (uchardet via Resiliparse). A page that is UTF-8 but for a few bad
bytes keeps its text with U+FFFD in their place, never a whole-page re-decode as Latin-1.
"""

from __future__ import annotations

import codecs
import re

from pretrain.data.readers.base import ReadStats

HTML_TYPES = frozenset({"text/html", "application/xhtml+xml", "application/xml+xhtml"})
_META_CHARSET = re.compile(rb"""<meta[^>]{0,200}?charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]{1,40})""", re.IGNORECASE)
_HTML_START = re.compile(rb"^\s*(<!--.*?-->\s*)*<(!doctype\s+html|html|head|body)\b", re.IGNORECASE | re.DOTALL)
ALWAYS_SKIPPED = ("head", "script", "style", "noscript", "template", "iframe")
# Each selector costs a little on every element: keep the list short and the patterns frequent.
BOILERPLATE_SELECTORS = (
    "nav", "aside", "footer", "body > header", "dialog", "[hidden]", "[aria-hidden=true]",
    "[role=navigation]", "[role=banner]", "[role=contentinfo]", "[role=complementary]", "[role=dialog]",
    "[role=search]", "[style*='display:none']", "[class*=navbar]", "[class*=menu]", "[class*=sidebar]",
    "[class*=breadcrumb]", "[class*=footer]", "[class*=cookie]", "[class*=consent]", "[class*=social]",
    "[class*=advert]", "[class*=popup]", "[class*=skip-link]",
)
MOSTLY_UTF8 = 0.01  # at most this share of replaced characters still counts as "UTF-8 with a few bad bytes"


def is_html(content_type: str | None, body: bytes) -> bool:
    """HTML by its declared type; without one (or a generic one), by sniffing the start of the body."""
    if content_type in HTML_TYPES:
        return True
    if content_type in (None, "", "application/octet-stream", "text/plain"):
        return bool(_HTML_START.match(body[:1024]))
    return False


def _codec(name: str | None) -> str | None:
    if not name:
        return None
    try:
        return codecs.lookup(name.strip().strip("\"'")).name
    except LookupError:
        return None


def meta_charset(body: bytes) -> str | None:
    found = _META_CHARSET.search(body[:4096])
    return _codec(found.group(1).decode("ascii", "replace")) if found else None


def decode_html(body: bytes, http_charset: str | None, stats: ReadStats) -> str:
    """The page's text as str, following the module's charset rules; repairs are counted in ``stats``."""
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        pass
    declared = _codec(http_charset) or meta_charset(body)
    if declared and declared != "utf-8":
        try:
            return body.decode(declared)
        except UnicodeDecodeError:
            stats.repair("wrong_charset_declared")
    replaced = body.decode("utf-8", errors="replace")
    if replaced.count("\ufffd") <= MOSTLY_UTF8 * max(1, len(replaced)):
        stats.repair("invalid_utf8")
        return replaced
    from resiliparse.parse.encoding import detect_encoding

    detected = _codec(detect_encoding(body)) or "cp1252"
    stats.repair("charset_detected")
    return body.decode(detected, errors="replace")


def extract_text(html: str, extractor: str = "resiliparse", main_content: bool = True, rules: str = "selectors",
                 selectors: tuple[str, ...] | list[str] = BOILERPLATE_SELECTORS) -> str:
    """Visible text of a page: the main content only (no menus, footers, sidebars) unless told otherwise."""
    if extractor == "trafilatura":
        import trafilatura

        # trafilatura always extracts the main content; its settings mirror datatrove's defaults.
        text = trafilatura.extract(html, favor_precision=True, include_comments=False, deduplicate=True) or ""
    else:
        from resiliparse.extract.html2text import extract_plain_text

        skip = [*ALWAYS_SKIPPED, *(selectors if main_content and rules == "selectors" else ())]
        text = extract_plain_text(html, main_content=main_content and rules == "resiliparse", skip_elements=skip,
                                  alt_texts=False, links=False, list_bullets=True, preserve_formatting=True)
    return text.replace("\xa0", " ").strip()  # &nbsp; is layout, not text: keep it out of the tokenizer
