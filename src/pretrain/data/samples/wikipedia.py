"""A small, realistic MediaWiki export (Wikipedia's dump format), built from the standard library's docstrings.

Articles use the wikitext a real dump is full of: an infobox template, ``<ref>`` citations, a table,
a ``[[File:...]]`` image, categories, interlanguage links, labelled links, bold/italic, headings and
lists. Everything the cleaner must remove carries the marker word ``HIDDEN`` so tests can check no
trace of it is left; what must stay is listed per page. Some pages are redirects, some are in other
namespaces (Talk:, User:). Multistream output compresses each group of pages as its own bz2 stream
and concatenates them, the first stream holding only the ``<siteinfo>`` header, like the real dumps.
"""

from __future__ import annotations

import ast
import bz2
import dataclasses
import datetime
import functools
import gzip
import lzma
import pathlib
import re
import sysconfig
from xml.sax.saxutils import escape, quoteattr

from pretrain import storage

HIDDEN = "qqhidden"  # in every piece of wikitext that must not survive cleaning
EXPORT_NS = "http://www.mediawiki.org/xml/export-0.10/"
_UNSAFE = re.compile(r"[^A-Za-z0-9 .,;:]+")  # sample prose stays plain: no accidental wiki markup
NAMESPACES = {-2: "Media", -1: "Special", 0: "", 1: "Talk", 2: "User", 3: "User talk", 4: "Wikipedia",
              6: "File", 10: "Template", 14: "Category"}


@dataclasses.dataclass(frozen=True)
class SamplePage:
    """One page of the sample dump, and what its clean text must (not) contain."""

    title: str
    page_id: int
    namespace: int
    revision_id: int
    timestamp: str
    wikitext: str
    redirect: str = ""  # target title of a redirect page
    must_contain: tuple[str, ...] = ()
    must_not_contain: tuple[str, ...] = ()

    @property
    def is_article(self) -> bool:
        return self.namespace == 0 and not self.redirect


@dataclasses.dataclass
class WikiDump:
    """What :func:`write_wikipedia_dump` wrote: the pages, and for multistream files each stream's offset."""

    path: str
    pages: list[SamplePage]
    base_url: str
    stream_offsets: list[int] = dataclasses.field(default_factory=list)  # raw byte offset of each stream
    stream_titles: list[list[str]] = dataclasses.field(default_factory=list)  # page titles of each stream

    @property
    def articles(self) -> list[SamplePage]:
        return [p for p in self.pages if p.is_article]

    @property
    def redirects(self) -> int:
        return sum(1 for p in self.pages if p.namespace == 0 and p.redirect)

    @property
    def other_namespaces(self) -> int:
        return sum(1 for p in self.pages if p.namespace != 0)

    def page_url(self, title: str) -> str:
        return self.base_url + title.replace(" ", "_")


def _plain(text: str, limit: int) -> str:
    words = _UNSAFE.sub(" ", text).split()
    out = " ".join(words)
    return out[:limit].rsplit(" ", 1)[0] if len(out) > limit else out


def _first_paragraph(doc: str, limit: int) -> str:
    return _plain(doc.strip().split("\n\n", 1)[0], limit)


@functools.lru_cache(maxsize=1)
def _modules() -> tuple[tuple[str, str, tuple[tuple[str, str], ...]], ...]:
    """(module name, lead paragraph, ((function or class, paragraph), ...)) from stdlib sources, sorted."""
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    found = []
    for path in sorted(root.glob("*.py")):
        if path.stat().st_size > 150_000 or path.name.startswith("_"):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        except SyntaxError:
            continue
        lead = _first_paragraph(ast.get_docstring(tree) or "", 500)
        sections = []
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.ClassDef) and not node.name.startswith("_"):
                doc = _first_paragraph(ast.get_docstring(node) or "", 600)
                if len(doc) >= 60:
                    sections.append((node.name, doc))
        if len(lead) >= 60 and sections:
            found.append((path.stem, lead, tuple(sections[:4])))
    return tuple(found)


def _timestamp(i: int) -> str:
    when = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC) + datetime.timedelta(hours=7 * i)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _article(i: int, title: str, lead: str, sections: tuple[tuple[str, str], ...]) -> tuple[str, list[str]]:
    """Wikitext of one article and the strings its clean text must keep."""
    h = f"{HIDDEN}{i}"
    first = sections[0]
    lines = [
        "{{Short description|" + h + " short description}}",
        "{{Infobox software",
        f"| name = {h} infobox name",
        f"| license = PSF {h}",
        "}}",
        f"'''{title}''' is a module of the [[Python (programming language)|Python standard library]]. "
        f"{lead}<ref name=\"doc{i}\">{{{{cite web |url=https://docs.python.org/3/ |title={h} cite}}}}</ref>",
        "",
        f"<!-- {h} comment -->The module is ''commonly imported''{{{{citation needed|date={h}}}}} "
        f"and documented on [https://docs.python.org/3/ the Python website].",
        "",
        "== Overview ==",
        f"[[File:Module {i}.svg|thumb|right|{h} caption with [[Link in caption]]]]",
        f"{first[1]}<ref>{h} plain reference</ref>",
        "",
    ]
    for name, doc in sections[1:]:
        lines += [f"=== {name} ===", doc, ""]
    lines += [
        "== Members ==",
        '{| class="wikitable"',
        "|-",
        f"! {h} header !! Kind",
        "|-",
        f"| {h} cell || function",
        "|}",
        f"* The [[{first[0]}]] entry point",
        "* Other members: see [[Python syntax and semantics|the language reference]]",
        "",
        "== See also ==",
        "* [[Python (programming language)]]",
        f"* [[wikt:module|module]] on Wiktionary{{{{sfn|{h}|2024}}}}",
        "",
        "{{Python stdlib navbox}}",
        f"[[Category:{h} Python standard library]]",
        f"[[Category:{h} software|{title}]]",
        f"[[de:{h} {title}]]",
        f"[[fr:{h} {title}]]",
    ]
    keep = [title, "Python standard library", "Overview", "Members", "See also", "commonly imported",
            "the Python website", "the language reference", "Python (programming language)", first[0], lead[:40],
            first[1][:40], "module on Wiktionary", *(name for name, _ in sections[1:])]
    return "\n".join(lines), keep


DROPPED = (HIDDEN, "[[", "]]", "{{", "}}", "'''", "''", "<ref", "</ref", "==", "{|", "|}", "Infobox", "Category:",
           "File:", "thumb", "cite web", "<!--", "docs.python.org", "navbox", "wikitable")


def sample_pages(n: int = 60) -> list[SamplePage]:
    """``n`` pages: mostly articles, every 7th a redirect, a few Talk: and User: pages. Deterministic."""
    modules = _modules()
    pages: list[SamplePage] = []
    articles: list[str] = []
    for i in range(n):
        page_id, rev, ts = 10 + 3 * i, 100_000 + 7 * i, _timestamp(i)
        if i % 7 == 3 and articles:
            target = articles[i % len(articles)]
            title = f"Redirect {i} to {target}"
            pages.append(SamplePage(title, page_id, 0, rev, ts, f"#REDIRECT [[{target}]]\n\n{{{{R from move}}}}",
                                    redirect=target))
            continue
        if i % 11 == 5:
            ns = 1 if i % 2 else 2
            title = f"{NAMESPACES[ns]}:Sample {i}"
            pages.append(SamplePage(title, page_id, ns, rev, ts, f"Discussion of page {i}. ~~~~"))
            continue
        name, lead, sections = modules[i % len(modules)]
        cycle = i // len(modules)
        title = name[:1].upper() + name[1:] + (f" (revision {cycle + 1})" if cycle else "")
        text, keep = _article(i, title, lead, sections)
        articles.append(title)
        pages.append(SamplePage(title, page_id, 0, rev, ts, text, must_contain=tuple(keep),
                                must_not_contain=DROPPED))
    return pages


def siteinfo_xml(lang: str = "en") -> str:
    spaces = "\n".join(f'      <namespace key="{k}" case="first-letter">{escape(v)}</namespace>' if v else
                       f'      <namespace key="{k}" case="first-letter" />' for k, v in NAMESPACES.items())
    return (f"  <siteinfo>\n    <sitename>Wikipedia</sitename>\n    <dbname>{lang}wiki</dbname>\n"
            f"    <base>https://{lang}.wikipedia.org/wiki/Main_Page</base>\n"
            f"    <generator>MediaWiki 1.42.0-wmf.1</generator>\n    <case>first-letter</case>\n"
            f"    <namespaces>\n{spaces}\n    </namespaces>\n  </siteinfo>\n")


def header_xml(lang: str = "en") -> str:
    return (f'<mediawiki xmlns="{EXPORT_NS}" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
            f'xsi:schemaLocation="{EXPORT_NS} {EXPORT_NS}export-0.10.xsd" version="0.10" xml:lang="{lang}">\n'
            + siteinfo_xml(lang))


FOOTER = "</mediawiki>\n"


def page_xml(page: SamplePage) -> str:
    redirect = f"    <redirect title={quoteattr(page.redirect)} />\n" if page.redirect else ""
    body = page.wikitext.encode("utf-8")
    return (f"  <page>\n    <title>{escape(page.title)}</title>\n    <ns>{page.namespace}</ns>\n"
            f"    <id>{page.page_id}</id>\n{redirect}    <revision>\n      <id>{page.revision_id}</id>\n"
            f"      <parentid>{page.revision_id - 1}</parentid>\n      <timestamp>{page.timestamp}</timestamp>\n"
            f"      <contributor>\n        <username>Sample</username>\n        <id>42</id>\n      </contributor>\n"
            f"      <model>wikitext</model>\n      <format>text/x-wiki</format>\n"
            f'      <text bytes="{len(body)}" xml:space="preserve">{escape(page.wikitext)}</text>\n'
            f"      <sha1>{'0' * 31}</sha1>\n    </revision>\n  </page>\n")


def bz2_multistream(chunks: list[bytes]) -> tuple[bytes, list[int]]:
    """Each chunk compressed as its own bz2 stream, concatenated: the bytes and each stream's offset."""
    out, offsets, at = [], [], 0
    for chunk in chunks:
        data = bz2.compress(chunk, 9)
        offsets.append(at)
        out.append(data)
        at += len(data)
    return b"".join(out), offsets


def compress(data: bytes, path: str) -> bytes:
    """``data`` compressed as the file name's suffix says (one stream)."""
    lower = path.lower()
    if lower.endswith(".bz2"):
        return bz2.compress(data, 9)
    if lower.endswith((".gz", ".gzip")):
        return gzip.compress(data, mtime=0)
    if lower.endswith(".xz"):
        return lzma.compress(data)
    if lower.endswith((".zst", ".zstd")):
        import zstandard

        return zstandard.ZstdCompressor().compress(data)
    return data


def write_wikipedia_dump(path: str, pages: int | list[SamplePage] = 60, multistream: bool = True,
                         pages_per_stream: int = 10, lang: str = "en") -> WikiDump:
    """Write a MediaWiki export to ``path`` (local or s3://; compression from the suffix).

    A ``.bz2`` path with ``multistream`` (the default) is written like Wikipedia's multistream dumps:
    the header in the first stream, then ``pages_per_stream`` pages per stream, the footer in the last.
    """
    items = sample_pages(pages) if isinstance(pages, int) else list(pages)
    base = f"https://{lang}.wikipedia.org/wiki/"
    dump = WikiDump(path=path, pages=items, base_url=base)
    if path.lower().endswith(".bz2") and multistream:
        chunks = [header_xml(lang).encode("utf-8")]
        dump.stream_titles.append([])
        for k in range(0, len(items), pages_per_stream):
            group = items[k: k + pages_per_stream]
            chunks.append("".join(page_xml(p) for p in group).encode("utf-8"))
            dump.stream_titles.append([p.title for p in group])
        chunks[-1] += FOOTER.encode("utf-8")
        data, dump.stream_offsets = bz2_multistream(chunks)
    else:
        xml = header_xml(lang) + "".join(page_xml(p) for p in items) + FOOTER
        data = compress(xml.encode("utf-8"), path)
    storage.write_bytes(path, data)
    return dump
