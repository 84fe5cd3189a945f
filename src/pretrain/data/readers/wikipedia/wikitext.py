"""Wikitext -> the text a reader sees, from ``mwparserfromhell``'s token stream: templates, references,
tables, files, categories and interlanguage links go; section titles and link labels stay.
"""

from __future__ import annotations

import dataclasses
import html
import re
from typing import TYPE_CHECKING, Any

from mwparserfromhell.parser import CTokenizer
from mwparserfromhell.parser import tokens as tk

if TYPE_CHECKING:
    from pretrain.data.readers.wikipedia.pages import SiteInfo

FILE_NAMESPACES = {"file", "image", "media"}
CATEGORY_NAMESPACES = {"category"}
# Interwiki prefixes of sister projects: their links show text in the page, unlike language links.
PROJECT_PREFIXES = {"wikt", "wiktionary", "w", "wikipedia", "s", "wikisource", "q", "wikiquote", "b", "wikibooks",
                    "n", "wikinews", "v", "wikiversity", "voy", "wikivoyage", "d", "wikidata", "c", "commons",
                    "m", "meta", "species", "wikispecies", "mw", "phab", "foundation", "wmf"}
LANGUAGE_CODE = re.compile(r"[a-z]{2,3}(?:-[a-z0-9]{2,8})*")  # a link *prefix*, never wikitext itself
DROPPED_TAGS = {"ref", "references", "gallery", "timeline", "imagemap", "math", "chem", "ce", "score", "graph",
                "templatedata", "templatestyles", "mapframe", "maplink", "indicator", "includeonly", "table",
                "inputbox", "categorytree", "hiero", "section", "style", "script"}
BREAK_TAGS = {"br", "hr"}
BLOCK_TAGS = {"p", "div", "blockquote", "pre", "center", "poem", "tr", "li", "dd", "dt", "ul", "ol", "dl"}
BEHAVIOR_SWITCHES = ("__NOTOC__", "__FORCETOC__", "__TOC__", "__NOEDITSECTION__", "__NEWSECTIONLINK__",
                     "__NONEWSECTIONLINK__", "__NOGALLERY__", "__HIDDENCAT__", "__INDEX__", "__NOINDEX__",
                     "__STATICREDIRECT__", "__DISAMBIG__", "__EXPECTUNUSEDCATEGORY__", "__NOTITLECONVERT__",
                     "__NOCONTENTCONVERT__")


@dataclasses.dataclass(frozen=True)
class LinkNames:
    """Link prefixes whose links are dropped: files, categories (localized names from siteinfo too)."""

    files: frozenset[str] = frozenset(FILE_NAMESPACES)
    categories: frozenset[str] = frozenset(CATEGORY_NAMESPACES)

    @classmethod
    def of(cls, site: SiteInfo) -> LinkNames:
        return cls(frozenset(FILE_NAMESPACES | site.names(6) | site.names(-2)),
                   frozenset(CATEGORY_NAMESPACES | site.names(14)))


DEFAULT_NAMES = LinkNames()


# ----------------------------------------------------------------------------------------------- wikitext


def clean_wikitext(wikitext: str, names: LinkNames = DEFAULT_NAMES) -> str:
    """The text a reader sees: markup, templates, references, tables, files, categories and
    interlanguage links removed; headings, link labels and the prose of lists and quotes kept.

    Walks mwparserfromhell's token stream (its C tokenizer) rather than its node tree: the same
    parse, without building Python objects for every node, which costs 5x the tokenizing itself.
    """
    tokens = _tokenizer().tokenize(wikitext, 0, False)
    out: list[str] = []
    _emit(tokens, 0, len(tokens), out, names)
    return _tidy("".join(out))


def _tokenizer() -> Any:
    if CTokenizer is not None:
        return CTokenizer()
    from mwparserfromhell.parser.tokenizer import Tokenizer

    return Tokenizer()


def _match(tokens: list, i: int, opener: type, closers: tuple[type, ...]) -> int:
    """Index of the token closing the construct opened at ``i`` (constructs nest, and always close)."""
    depth = 0
    for j in range(i, len(tokens)):
        kind = type(tokens[j])
        if kind is opener:
            depth += 1
        elif kind in closers:
            depth -= 1
            if depth == 0:
                return j
    return len(tokens) - 1


def _find(tokens: list, kind: type, start: int, stop: int) -> int:
    return next((k for k in range(start, stop) if type(tokens[k]) is kind), -1)


def _emit(tokens: list, i: int, stop: int, out: list[str], names: LinkNames) -> None:
    """Append the visible text of ``tokens[i:stop]`` to ``out``."""
    while i < stop:
        tok = tokens[i]
        kind = type(tok)
        if kind is tk.Text:
            text = tok.text
            if "__" in text:
                for switch in BEHAVIOR_SWITCHES:
                    text = text.replace(switch, "")
            out.append(text)
            i += 1
        elif kind is tk.WikilinkOpen:
            i = _wikilink(tokens, i, out, names)
        elif kind is tk.TagOpenOpen:
            i = _tag(tokens, i, out, names)
        elif kind is tk.TemplateOpen:  # templates and their parameters show no prose of the page
            i = _match(tokens, i, tk.TemplateOpen, (tk.TemplateClose,)) + 1
        elif kind is tk.ArgumentOpen:
            i = _match(tokens, i, tk.ArgumentOpen, (tk.ArgumentClose,)) + 1
        elif kind is tk.CommentStart:
            i = _match(tokens, i, tk.CommentStart, (tk.CommentEnd,)) + 1
        elif kind is tk.HeadingStart or kind is tk.HeadingEnd:
            out.append("\n")
            i += 1
        elif kind is tk.HTMLEntityStart:
            j = _match(tokens, i, tk.HTMLEntityStart, (tk.HTMLEntityEnd,))
            entity = "".join(t.text if type(t) is tk.Text else "#" if type(t) is tk.HTMLEntityNumeric else t.char
                             for t in tokens[i + 1: j])
            out.append(html.unescape(f"&{entity};"))
            i = j + 1
        elif kind is tk.ExternalLinkOpen:
            j = _match(tokens, i, tk.ExternalLinkOpen, (tk.ExternalLinkClose,))
            sep = _find(tokens, tk.ExternalLinkSeparator, i + 1, j)
            if tok.brackets and sep >= 0:  # [url label] shows the label; bare URLs show nothing worth keeping
                _emit(tokens, sep + 1, j, out, names)
            i = j + 1
        else:
            i += 1


def _wikilink(tokens: list, i: int, out: list[str], names: LinkNames) -> int:
    j = _match(tokens, i, tk.WikilinkOpen, (tk.WikilinkClose,))
    sep = _find(tokens, tk.WikilinkSeparator, i + 1, j)
    title_end = sep if sep >= 0 else j
    target = "".join(t.text for t in tokens[i + 1: title_end] if type(t) is tk.Text).strip()
    visible = target.startswith(":")  # [[:Category:X]] or [[:fr:X]]: an inline link, not a tag
    target = target.lstrip(":").strip()
    if not visible and ":" in target:
        prefix = target.split(":", 1)[0].strip().lower()
        if prefix in names.files or prefix in names.categories:
            return j + 1
        if prefix not in PROJECT_PREFIXES and LANGUAGE_CODE.fullmatch(prefix):
            return j + 1  # an interlanguage link: shown in the sidebar, not in the text
    mark = len(out)
    if sep >= 0:
        _emit(tokens, sep + 1, j, out, names)
    if not "".join(out[mark:]).strip():  # no label, or the pipe trick [[Target|]]: the target shows
        del out[mark:]
        out.append(target)
    return j + 1


def _tag(tokens: list, i: int, out: list[str], names: LinkNames) -> int:
    j = _match(tokens, i, tk.TagOpenOpen, (tk.TagCloseSelfclose, tk.TagCloseClose))
    head = tokens[i + 1] if i + 1 < j else None
    name = head.text.strip().lower() if type(head) is tk.Text else ""
    markup = tokens[i].wiki_markup
    if name in DROPPED_TAGS or markup == "{|":
        return j + 1
    if name in BREAK_TAGS:
        out.append("\n")
        return j + 1
    if type(tokens[j]) is tk.TagCloseClose:
        body = next(k for k in range(i + 1, j) if type(tokens[k]) in (tk.TagCloseOpen, tk.TagCloseSelfclose))
        close = next(k for k in range(j - 1, body, -1) if type(tokens[k]) is tk.TagOpenClose)
        _emit(tokens, body + 1, close, out, names)
    if name in BLOCK_TAGS and markup is None:
        out.append("\n")
    return j + 1


def _tidy(text: str) -> str:
    """One space between words, no empty parentheses left by removed templates, one blank line at most."""
    lines: list[str] = []
    blank = True
    for raw in text.replace("()", "").split("\n"):
        line = " ".join(raw.split())
        if line:
            lines.append(line)
            blank = False
        elif not blank:
            lines.append("")
            blank = True
    return "\n".join(lines).strip()
