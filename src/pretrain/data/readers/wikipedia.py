"""MediaWiki XML dumps (Wikipedia's ``pages-articles``): one document per main-namespace page.

Streamed, never a whole file in memory: the decompressed XML is cut into ``<page>...</page>`` chunks
and each chunk is parsed on its own with ElementTree (C-accelerated), so one malformed page costs
that page only. Wikitext becomes clean text with ``mwparserfromhell``'s parse tree: templates,
references, tables, files, categories and interlanguage links go; section titles and link labels stay.

A multistream ``.xml.bz2`` (many concatenated bz2 streams, as Wikipedia ships them) is split into
byte ranges whose boundaries are stream starts, and each stream is decoded on its own: a corrupt
stream loses its own pages (counted) and reading resumes at the next stream header.
"""

from __future__ import annotations

import bz2
import dataclasses
import functools
import html
import lzma
import re
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Iterator
from typing import IO, Any
from urllib.parse import quote

from mwparserfromhell.parser import CTokenizer, ParserError
from mwparserfromhell.parser import tokens as tk

from pretrain.data.files import list_files
from pretrain.data.readers import streams
from pretrain.data.readers.base import InputError, Partition, ReadStats, decode_utf8, document

READ_BYTES = 1 << 20  # raw bytes read at a time
RAW_CHUNK = 64 << 10  # raw bytes fed at a time to gzip/xz/zstd (their output is not bounded otherwise)
OUT_BYTES = 1 << 20  # decompressed bytes produced at a time (bz2 may expand 50x: bound it)
STREAM_HOLD_BYTES = 64 << 20  # pages of one stream held until its CRC is checked, at most this much
SITEINFO_BYTES = 1 << 20  # the header is small; never look further than this for it
VERIFY_BYTES = 2 << 20  # raw bytes fed to a candidate stream to prove it decodes
PROBE_BYTES = 16 << 20  # no stream start within this after a split point: a single-stream file

# The bz2 stream header: "BZh", the block-size level, then the first block's magic (pi in BCD).
BZ2_HEADER = re.compile(rb"BZh[1-9]1AY&SY")
HEADER_LEN = 10
PAGE_OPEN, PAGE_CLOSE = b"<page>", b"</page>"
TAIL = len(PAGE_CLOSE) - 1  # bytes kept at a chunk's end so a tag split across chunks is still found

try:
    from zstandard import ZstdError
except ImportError:  # zstd support is optional
    ZstdError = OSError
DECODE_ERRORS = (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError, ZstdError)

WIKI_LICENSE = "CC-BY-SA-4.0"
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
class SiteInfo:
    """What the dump's ``<siteinfo>`` tells: where pages live and the wiki's namespace names."""

    base: str = ""  # e.g. https://en.wikipedia.org/wiki/Main_Page
    dbname: str = ""
    namespaces: tuple[tuple[int, str], ...] = ()

    @property
    def page_prefix(self) -> str:
        return self.base[: self.base.rfind("/") + 1] if "://" in self.base else ""

    def page_url(self, title: str) -> str:
        if not self.page_prefix:
            return f"wiki:{title}"
        return self.page_prefix + quote(title.replace(" ", "_"), safe=";@$!*(),/~:")  # MediaWiki's wfUrlencode

    def names(self, key: int) -> set[str]:
        return {name.lower() for k, name in self.namespaces if k == key and name}

    def namespace_of(self, title: str) -> int:
        """A title's namespace from its prefix, for old dumps without ``<ns>``."""
        prefix = title.split(":", 1)[0].lower() if ":" in title else ""
        return next((k for k, name in self.namespaces if prefix and name.lower() == prefix), 0)


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


# ----------------------------------------------------------------------------------------------- XML


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child(elem: ET.Element, name: str) -> ET.Element | None:
    return next((c for c in elem if _local(c.tag) == name), None)


def _child_text(elem: ET.Element, name: str) -> str:
    child = _child(elem, name)
    return (child.text or "") if child is not None else ""


def parse_siteinfo(data: bytes) -> SiteInfo:
    """``<siteinfo>...</siteinfo>`` bytes -> SiteInfo (empty on malformed XML: URLs fall back to wiki:)."""
    try:
        root = ET.fromstring(data.decode("utf-8", errors="replace"))
    except ET.ParseError:
        return SiteInfo()
    spaces = _child(root, "namespaces")
    namespaces = tuple((int(ns.get("key", "0")), (ns.text or "").strip()) for ns in (spaces if spaces is not None
                                                                                      else ()))
    return SiteInfo(base=_child_text(root, "base").strip(), dbname=_child_text(root, "dbname").strip(),
                    namespaces=namespaces)


@dataclasses.dataclass
class Page:
    title: str
    page_id: str
    namespace: int
    redirect: bool
    revision_id: str
    timestamp: str
    text: str


def parse_page(xml_text: str, site: SiteInfo) -> Page:
    """One ``<page>`` element; raises ET.ParseError when it is not well-formed XML."""
    root = ET.fromstring(xml_text)
    title = _child_text(root, "title")
    ns_text = _child_text(root, "ns").strip()
    namespace = int(ns_text) if ns_text.lstrip("-").isdigit() else site.namespace_of(title)
    revisions = [c for c in root if _local(c.tag) == "revision"]
    rev = revisions[-1] if revisions else None  # full-history dumps: the latest revision
    text = _child_text(rev, "text") if rev is not None else ""
    redirect = _child(root, "redirect") is not None or text.lstrip()[:9].upper() == "#REDIRECT"
    return Page(title=title, page_id=_child_text(root, "id").strip(), namespace=namespace, redirect=redirect,
                revision_id=_child_text(rev, "id").strip() if rev is not None else "",
                timestamp=_child_text(rev, "timestamp").strip() if rev is not None else "", text=text)


# ----------------------------------------------------------------------------------------------- pages


class PageSplitter:
    """Cuts decompressed XML into ``<page>`` chunks, holding one page (bounded) plus a small tail.

    ``may_start=False`` (data from past the partition's end) only finishes a page already open, so
    a page that straddles two streams belongs to the partition its ``<page>`` tag starts in.
    """

    def __init__(self, limit: int, url: str, stats: ReadStats) -> None:
        self.limit, self.url, self.stats = limit, url, stats
        self.buf = bytearray()
        self.in_page = self.skipping = self.done = False
        self.scan = 0  # where to resume searching in buf
        self.boundary = -1  # in gap mode past the range: a <page> must start before this index
        self.offset = 0  # raw offset of the stream being fed, for error reports
        self.pages: list[bytes] = []
        self.siteinfo: bytes | None = None
        self.saw_xml = False

    def feed(self, data: bytes, may_start: bool = True) -> None:
        if self.done:
            return
        self.buf += data
        while not self.done and (self._in_page_step() if self.in_page else self._gap_step(may_start)):
            pass

    def end_range(self) -> None:
        """The partition's own streams are all fed: from now on only finish what is open."""
        if self.boundary < 0:
            self.boundary = 0 if self.in_page else len(self.buf)

    @property
    def wants_more(self) -> bool:
        """Is a page open, or could the partition's last bytes be the start of a ``<page>`` tag?"""
        if self.done or self.in_page:
            return not self.done
        n = len(self.buf)
        return any(PAGE_OPEN.startswith(self.buf[j:]) for j in range(max(0, n - TAIL), min(self.boundary, n)))

    @property
    def open_page(self) -> bool:
        return self.in_page and not self.skipping

    def drop_open(self) -> None:
        """Forget a partial page (its stream was lost) and wait for the next ``<page>``."""
        self.buf.clear()
        self.in_page = self.skipping = False
        self.scan = 0

    def _gap_step(self, may_start: bool) -> bool:
        i = self.buf.find(PAGE_OPEN, self.scan)
        if i < 0:
            self._keep_gap_tail()
            return False
        if not may_start and (self.boundary < 0 or i >= self.boundary):
            self.done = True
            return False
        self._look_for_siteinfo(i)
        del self.buf[:i]
        self.in_page, self.scan, self.saw_xml = True, len(PAGE_OPEN), True
        if self.boundary >= 0:
            self.boundary = 0
        return True

    def _keep_gap_tail(self) -> None:
        if self.siteinfo is None and b"<siteinfo" in self.buf and len(self.buf) < SITEINFO_BYTES:
            self._look_for_siteinfo(len(self.buf))
            if self.siteinfo is None:
                self.scan = max(0, len(self.buf) - TAIL)
                return
        if b"<mediawiki" in self.buf:
            self.saw_xml = True
        cut = max(0, len(self.buf) - TAIL)
        if self.boundary >= 0:
            self.boundary = max(0, self.boundary - cut)
        del self.buf[:cut]
        self.scan = 0

    def _look_for_siteinfo(self, stop: int) -> None:
        if self.siteinfo is not None:
            return
        start = self.buf.find(b"<siteinfo", 0, stop)
        end = self.buf.find(b"</siteinfo>", max(start, 0), stop)
        if start >= 0 and end >= 0:
            self.siteinfo = bytes(self.buf[start:end + len(b"</siteinfo>")])
            self.saw_xml = True

    def _in_page_step(self) -> bool:
        close = self.buf.find(PAGE_CLOSE, self.scan)
        reopen = self.buf.find(PAGE_OPEN, self.scan, close if close >= 0 else len(self.buf))
        if reopen >= 0:  # a page that never closed: malformed, and the next one starts here
            if not self.skipping:  # (a too_large page is counted already)
                self._count_lost("malformed_xml", "page without </page>")
            del self.buf[:reopen]
            self.skipping, self.scan = False, len(PAGE_OPEN)
            return True
        if close < 0:
            if self.skipping:
                del self.buf[:-TAIL]
                self.scan = 0
            elif len(self.buf) > self.limit:
                self._count_lost("too_large", f"page over {self.limit} bytes")
                self.skipping = True
                del self.buf[:-TAIL]
                self.scan = 0
            else:
                self.scan = max(0, len(self.buf) - TAIL)
            return False
        end = close + len(PAGE_CLOSE)
        if not self.skipping:
            if end > self.limit:
                self._count_lost("too_large", f"page of {end} bytes")
            else:
                self.pages.append(bytes(self.buf[:end]))
        del self.buf[:end]
        self.in_page = self.skipping = False
        self.scan = 0
        if self.boundary >= 0:
            self.done = True  # past the range: the straddling page is finished, the rest is another's
        return True

    def _count_lost(self, reason: str, detail: str) -> None:
        self.stats.record()
        self.stats.skip(reason, url=self.url, offset=self.offset, detail=detail)


# ----------------------------------------------------------------------------------------------- bz2 streams


def is_stream_start(data: bytes) -> bool:
    """Does ``data`` begin with a bz2 stream that decodes (at least as far as ``data`` goes)?"""
    if not BZ2_HEADER.match(data):
        return False
    dec = bz2.BZ2Decompressor()
    try:
        dec.decompress(data, max_length=1)
    except (OSError, EOFError):
        return False
    return True


def find_stream_start(raw: IO[bytes], offset: int, stop: int) -> int | None:
    """The first verified bz2 stream header at or after ``offset`` (``raw`` is positioned there), before ``stop``."""
    window, base, pos, eof = b"", offset, 0, False
    while True:
        m = BZ2_HEADER.search(window, pos)
        if m is not None:
            if base + m.start() >= stop:
                return None
            while len(window) - m.start() < VERIFY_BYTES and not eof:
                chunk = raw.read(READ_BYTES)
                eof, window = not chunk, window + chunk
            if is_stream_start(window[m.start(): m.start() + VERIFY_BYTES]):
                return base + m.start()
            pos = m.start() + 1
            continue
        if eof or base + len(window) >= stop + HEADER_LEN:
            return None
        cut = max(0, len(window) - HEADER_LEN + 1)  # a header may straddle two reads
        base, window, pos = base + cut, window[cut:], 0
        chunk = raw.read(READ_BYTES)
        eof, window = not chunk, window + chunk


def split_points(url: str, size: int, partition_bytes: int) -> list[int]:
    """Stream starts near every ``partition_bytes``: the boundaries of a multistream file's ranges."""
    points = [0]
    target = partition_bytes
    while target < size:
        if target <= points[-1]:
            target = points[-1] + partition_bytes
            continue
        with streams.open_raw(url, target) as raw:
            found = find_stream_start(raw, target, min(size, target + max(partition_bytes, PROBE_BYTES)))
        if found is None:
            if len(points) == 1:
                return points  # no stream start far into the file: one stream, not worth a scan
        elif found > points[-1]:
            points.append(found)
        target += partition_bytes
    return points


def plan(src, location: str) -> list[Partition]:
    """Whole files, except multistream ``.bz2`` larger than ``partition_bytes``: ranges at stream starts."""
    parts: list[Partition] = []
    for url, rel in list_files(location, src.include, src.exclude):
        size = streams.size(url) if streams.codec(url) == "bz2" else 0
        points = split_points(url, size, src.partition_bytes) if size > src.partition_bytes else [0]
        if len(points) == 1:
            parts.append(Partition(src.name, url, rel))
            continue
        ends = [*points[1:], size]
        parts += [Partition(src.name, url, rel, unit="bytes", start=s, end=e) for s, e in zip(points, ends,
                                                                                              strict=True)]
    return parts


@dataclasses.dataclass
class _Stream:
    """One bz2 stream's decoding: where it starts, and what became of it."""

    offset: int
    status: str = "ok"  # ok | corrupt | truncated | not_bz2
    detail: str = ""
    next_offset: int = -1  # raw offset right after it (ok only)


class _RawReader:
    """Sequential raw bytes of a file with their offsets; can jump forward (resync after corruption)."""

    def __init__(self, url: str, start: int) -> None:
        self.url = url
        self.raw = streams.open_raw(url, start)
        self.pos = start  # file offset of buf[0]
        self.buf = b""
        self.eof = False

    def fill(self) -> bool:
        if self.eof:
            return False
        chunk = self.raw.read(READ_BYTES)
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def seek(self, offset: int) -> None:
        self.raw.close()
        self.raw = streams.open_raw(self.url, offset)
        self.pos, self.buf, self.eof = offset, b"", False

    def close(self) -> None:
        self.raw.close()


def _decode_stream(rd: _RawReader, splitter: PageSplitter, may_start: bool) -> _Stream:
    """Feed one bz2 stream, starting at ``rd.pos``, into ``splitter``; leave ``rd`` right after it."""
    stream = _Stream(rd.pos)
    if not rd.buf:
        rd.fill()
    if len(rd.buf) < 10 and not rd.eof:
        rd.fill()
    if not BZ2_HEADER.match(rd.buf[:10]):
        stream.status = "truncated" if rd.eof and len(rd.buf) < 10 and b"BZh".startswith(rd.buf[:3]) else "not_bz2"
        return stream
    dec = bz2.BZ2Decompressor()
    splitter.offset = stream.offset
    try:
        while True:
            data, rd.buf = rd.buf, b""
            rd.pos += len(data)
            out = dec.decompress(data, max_length=OUT_BYTES)
            splitter.feed(out, may_start)
            while not dec.eof and not dec.needs_input:
                splitter.feed(dec.decompress(b"", max_length=OUT_BYTES), may_start)
            if dec.eof:
                rest = dec.unused_data
                rd.buf, rd.pos = rest, rd.pos - len(rest)
                stream.next_offset = rd.pos
                return stream
            if not rd.fill():
                stream.status, stream.detail = "truncated", "file ends inside a bz2 stream"
                return stream
    except (OSError, EOFError, ValueError) as err:
        stream.status, stream.detail = "corrupt", str(err)
        return stream


# ----------------------------------------------------------------------------------------------- read


@functools.lru_cache(maxsize=64)
def _first_siteinfo(url: str, kind: str | None) -> SiteInfo:
    """The siteinfo at the head of the file, for a range that starts past it: read only the first stream."""
    stats = ReadStats()
    splitter = PageSplitter(1, url, stats)
    try:
        with streams.decompress(streams.open_raw(url), kind) as f:
            read = 0
            while splitter.siteinfo is None and read < SITEINFO_BYTES and not splitter.in_page:
                chunk = f.read(64 << 10)
                if not chunk:
                    break
                read += len(chunk)
                splitter.feed(chunk)
    except (OSError, EOFError, ValueError):
        pass
    return parse_siteinfo(splitter.siteinfo) if splitter.siteinfo else SiteInfo()


class _PageReader:
    """Turns page chunks into document rows, counting every page once."""

    def __init__(self, src, url: str, stats: ReadStats) -> None:
        self.src, self.url, self.stats = src, url, stats
        self.site: SiteInfo | None = None
        self.names = DEFAULT_NAMES

    def set_site(self, site: SiteInfo) -> None:
        self.site, self.names = site, LinkNames.of(site)

    def rows(self, chunks: list[bytes], offset: int) -> Iterator[dict[str, Any]]:
        for chunk in chunks:
            self.stats.record()
            row = self._row(chunk, offset)
            if row is not None:
                yield row

    def _row(self, chunk: bytes, offset: int) -> dict[str, Any] | None:
        site = self.site or SiteInfo()
        try:
            page = parse_page(decode_utf8(chunk, self.stats), site)
        except ET.ParseError as err:
            self.stats.skip("malformed_xml", url=self.url, offset=offset, detail=str(err))
            return None
        where = site.page_url(page.title)
        if page.namespace != 0:
            self.stats.skip("namespace", url=where, offset=offset, detail=f"ns {page.namespace}")
            return None
        if page.redirect:
            self.stats.skip("redirect", url=where, offset=offset)
            return None
        try:
            text = clean_wikitext(page.text, self.names)
        except ParserError as err:
            self.stats.skip("malformed_wikitext", url=where, offset=offset, detail=str(err))
            return None
        if not text:
            self.stats.skip("empty", url=where, offset=offset)
            return None
        meta = {"title": page.title, "page_id": page.page_id, "revision_id": page.revision_id,
                "namespace": page.namespace, "site": site.dbname}
        license = self.src.license or (WIKI_LICENSE if ".wikipedia.org/" in site.base else "")
        return document(self.src, source_id=page.page_id or page.title, text=text, url=where,
                        date=page.timestamp, license=license, meta=meta)


def read(src, part: Partition, stats: ReadStats) -> Iterator[dict[str, Any]]:
    """Documents of a dump file or of the bz2 streams that start in ``[part.start, part.end)``."""
    url = part.url
    try:
        size = streams.size(url)
    except FileNotFoundError:
        raise InputError(url, None, "file not found") from None
    if size == 0:
        stats.skip_file("empty", url=url, offset=0, detail="empty file")
        return
    kind = streams.codec(url)
    pages = _PageReader(src, url, stats)
    splitter = PageSplitter(src.max_document_bytes, url, stats)
    if part.start > 0:
        pages.set_site(_first_siteinfo(url, kind))
    losses = sum(stats.skipped.values()) + sum(stats.files_skipped.values())
    if kind == "bz2":
        yield from _read_bz2(part, size, splitter, pages, stats)
    else:
        yield from _read_other(url, kind, splitter, pages, stats)
    if not splitter.saw_xml and losses == sum(stats.skipped.values()) + sum(stats.files_skipped.values()):
        stats.skip_file("not_mediawiki", url=url, offset=part.start, detail="no <mediawiki> or <page> found")


def _site_from(splitter: PageSplitter, pages: _PageReader) -> None:
    if pages.site is None and splitter.siteinfo is not None:
        pages.set_site(parse_siteinfo(splitter.siteinfo))


def _read_bz2(part: Partition, size: int, splitter: PageSplitter, pages: _PageReader,
              stats: ReadStats) -> Iterator[dict[str, Any]]:
    url = part.url
    end = size if part.end < 0 else min(part.end, size)
    rd = _RawReader(url, part.start)
    try:
        while rd.pos < size:
            in_range = rd.pos < end
            if not in_range:
                splitter.end_range()
                if not splitter.wants_more:
                    break
            stream = _decode_stream(rd, splitter, in_range)
            _site_from(splitter, pages)
            held, splitter.pages = splitter.pages, []
            if stream.status == "ok":
                yield from pages.rows(held, stream.offset)
                continue
            if stream.status == "truncated":
                yield from pages.rows(held, stream.offset)  # blocks before the cut passed their CRC
                _count_cut(splitter, stats, url, stream.offset, stream.detail or "file ends inside a bz2 stream")
                break
            lost = len(held) + (1 if splitter.open_page else 0)
            splitter.drop_open()
            if stream.status == "not_bz2" and not lost:
                stats.skip_file("corrupt_stream", url=url, offset=stream.offset, detail="no bz2 stream header")
            else:
                for _ in range(max(lost, 1)):
                    stats.record()
                    stats.skip("corrupt_stream", url=url, offset=stream.offset, detail=stream.detail)
            if _resync(rd, stream.offset + 1, end) is None:
                break
    finally:
        stats.bytes_read += min(rd.pos, size) - part.start  # the streams decoded (and any skipped over)
        rd.close()


def _resync(rd: _RawReader, offset: int, end: int) -> int | None:
    """Move ``rd`` to the next verified stream header after a lost stream; None if none starts before ``end``."""
    rd.seek(offset)
    found = find_stream_start(rd.raw, offset, end)
    if found is None:
        return None
    rd.seek(found)
    return found


def _count_cut(splitter: PageSplitter, stats: ReadStats, url: str, offset: int, detail: str) -> None:
    if splitter.open_page:
        stats.record()
        stats.skip("truncated", url=url, offset=offset, detail=detail)
    else:
        stats.skip_file("truncated", url=url, offset=offset, detail=detail)
    splitter.drop_open()


def _decoder(kind: str | None) -> Any:
    """An incremental decoder with ``decompress``, ``eof`` and ``unused_data`` (one gzip member, xz or
    zstd frame), so a cut file is told from a complete one and the bytes before a bad spot are kept."""
    if kind == "gzip":
        return zlib.decompressobj(wbits=31)
    if kind == "xz":
        return lzma.LZMADecompressor()
    if kind == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj()
    raise ValueError(f"unknown compression {kind!r}")


def _decoded_chunks(raw: IO[bytes], kind: str | None) -> Iterator[tuple[int, bytes]]:
    """(raw offset, decompressed bytes) of a one-stream file; raises EOFError if it ends inside a stream."""
    pos = 0
    dec = _decoder(kind) if kind else None
    pending = False  # fed bytes of a stream that has not ended yet
    while chunk := raw.read(RAW_CHUNK):
        if dec is None:
            yield pos, chunk
            pos += len(chunk)
            continue
        while chunk:
            out = dec.decompress(chunk)
            pending = not dec.eof
            if out:
                yield pos, out
            chunk = dec.unused_data if dec.eof else b""
            if dec.eof:
                dec = _decoder(kind)  # the next gzip member / xz stream / zstd frame
        pos = raw.tell()
    if pending:
        raise EOFError("file ends inside a compressed stream")


def _read_other(url: str, kind: str | None, splitter: PageSplitter, pages: _PageReader,
                stats: ReadStats) -> Iterator[dict[str, Any]]:
    """Plain XML or gzip/xz/zstd: one stream, so a decoding error ends the file (what came before is kept)."""
    raw = streams.open_raw(url)
    chunks = _decoded_chunks(raw, kind)
    pos = 0
    try:
        while True:
            try:
                pos, chunk = next(chunks)
            except StopIteration:
                if splitter.open_page:
                    _count_cut(splitter, stats, url, pos, "file ends inside a page")
                break
            except DECODE_ERRORS as err:
                _site_from(splitter, pages)
                held, splitter.pages = splitter.pages, []
                yield from pages.rows(held, pos)
                _count_cut(splitter, stats, url, pos, f"{type(err).__name__}: {err}")
                break
            splitter.offset = pos
            splitter.feed(chunk)
            _site_from(splitter, pages)
            held, splitter.pages = splitter.pages, []
            yield from pages.rows(held, pos)
    finally:
        stats.bytes_read += raw.tell()
        raw.close()
