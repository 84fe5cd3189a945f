"""MediaWiki XML dumps (Wikipedia's ``pages-articles``): one document per main-namespace page.

Streamed, never a whole file in memory: the decompressed XML is cut into ``<page>...</page>`` chunks
and each chunk is parsed on its own with ElementTree (C-accelerated), so one malformed page costs
that page only. Wikitext becomes clean text with ``mwparserfromhell``'s parse tree: templates,
references, tables, files, categories and interlanguage links go; section titles and link labels stay.

A multistream ``.xml.bz2`` (many concatenated bz2 streams, as Wikipedia ships them) is split into
byte ranges whose boundaries are stream starts, and each stream is decoded on its own: a corrupt
stream loses its own pages (counted) and reading resumes at the next stream header.

This module plans and reads; ``wikitext`` cleans a page's markup, ``pages`` cuts and parses the
XML, ``bz2streams`` finds and decodes the streams of a multistream file.
"""

from __future__ import annotations

import functools
import lzma
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Iterator
from typing import IO, Any

from mwparserfromhell.parser import ParserError

from pretrain.data.files import list_files
from pretrain.data.readers import streams
from pretrain.data.readers.base import InputError, Partition, ReadStats, decode_utf8, document
from pretrain.data.readers.wikipedia.bz2streams import RawReader, decode_stream, find_stream_start, split_points
from pretrain.data.readers.wikipedia.pages import SITEINFO_BYTES, PageSplitter, SiteInfo, parse_page, parse_siteinfo
from pretrain.data.readers.wikipedia.wikitext import DEFAULT_NAMES, LinkNames, clean_wikitext

RAW_CHUNK = 64 << 10  # raw bytes fed at a time to gzip/xz/zstd (their output is not bounded otherwise)

try:
    from zstandard import ZstdError
except ImportError:  # zstd support is optional
    ZstdError = OSError
DECODE_ERRORS = (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError, ZstdError)

WIKI_LICENSE = "CC-BY-SA-4.0"


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
    rd = RawReader(url, part.start)
    try:
        while rd.pos < size:
            in_range = rd.pos < end
            if not in_range:
                splitter.end_range()
                if not splitter.wants_more:
                    break
            stream = decode_stream(rd, splitter, in_range)
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


def _resync(rd: RawReader, offset: int, end: int) -> int | None:
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
