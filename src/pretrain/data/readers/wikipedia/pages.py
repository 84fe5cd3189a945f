"""The XML of a MediaWiki dump: ``<siteinfo>`` and ``<page>`` elements parsed one at a time, and the
splitter that cuts a decompressed stream into page chunks (one page held at a time, bounded), so one
malformed page costs that page only.
"""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET
from urllib.parse import quote

from pretrain.data.readers.base import ReadStats

SITEINFO_BYTES = 1 << 20  # the header is small; never look further than this for it
PAGE_OPEN, PAGE_CLOSE = b"<page>", b"</page>"
TAIL = len(PAGE_CLOSE) - 1  # bytes kept at a chunk's end so a tag split across chunks is still found


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
