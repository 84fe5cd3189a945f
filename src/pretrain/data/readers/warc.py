"""WARC (``response`` records, HTML -> main text) and WET (``conversion`` records, already text).

Common Crawl ships both as one gzip member per record. Such files are read member by member: the
gzip framing is authoritative, so a record whose ``Content-Length`` is wrong is repaired from it, a
corrupt member is skipped (counted, with its byte offset) and reading resumes at the next member,
and a truncated file keeps every record before the cut. The same framing lets ``plan`` split large
files into byte ranges at member boundaries. Other files (plain, zstd, bz2, xz, or one gzip stream
for the whole file) are streamed with FastWARC; a plain file resyncs after a broken record, a
compressed stream that breaks ends its file there, counted.
"""

from __future__ import annotations

import io
import itertools
import re
import zlib
from collections.abc import Iterator
from typing import IO, Any

from pretrain.data.files import list_files
from pretrain.data.readers import html as html_text
from pretrain.data.readers.base import Partition, ReadStats, decode_utf8, document
from pretrain.data.readers.streams import codec, decompress, open_raw, size

CHUNK = 1 << 20
FEED = 1 << 15  # input fed to zlib per call: what lies past a member's end is copied back, so keep it small
HEADER_ROOM = 1 << 16  # WARC + HTTP headers allowed on top of max_document_bytes
GZIP_MAGIC = b"\x1f\x8b\x08"
SCAN_LIMIT = 16 << 20  # how far plan looks for a member boundary before it stops splitting a file
_CONTENT_LENGTH = re.compile(rb"^content-length:[ \t]*(\d+)[ \t]*\r?$", re.IGNORECASE | re.MULTILINE)
_WARC_TYPE = re.compile(rb"^warc-type:[ \t]*([A-Za-z-]+)", re.IGNORECASE | re.MULTILINE)
_PLAIN_RECORD = re.compile(rb"(?:^|\n)WARC/1\.[01]\r\n")


def wanted_type(src) -> str:
    return "conversion" if src.format == "wet" else "response"


# ---------------------------------------------------------------------------------------------------- plan

def plan(src, location: str) -> list[Partition]:
    """Whole files, except per-record gzip files larger than ``partition_bytes``: byte ranges at members."""
    parts = []
    for url, rel in list_files(location, src.include, src.exclude):
        total = size(url)
        if codec(url) != "gzip" or total <= src.partition_bytes:
            parts.append(Partition(src.name, url, rel))
            continue
        cuts = [0]
        with open_raw(url) as raw:
            target = src.partition_bytes
            while target < total:
                found = next_member(raw, target, limit=SCAN_LIMIT)
                if found is None or found >= total:
                    break  # one gzip stream for the whole file (or a long corrupt stretch): no split here
                if found > cuts[-1]:
                    cuts.append(found)
                target = max(found, target) + src.partition_bytes
        if len(cuts) == 1:
            parts.append(Partition(src.name, url, rel))
            continue
        bounds = [*cuts, -1]
        parts += [Partition(src.name, url, rel, "bytes", a, b) for a, b in itertools.pairwise(bounds)]
    return parts


def next_member(raw: IO[bytes], offset: int, limit: int = SCAN_LIMIT) -> int | None:
    """The offset of the first gzip member at or after ``offset`` that decompresses to a WARC record."""
    raw.seek(offset)
    scanned = 0
    carry = b""
    base = offset
    while scanned < limit:
        chunk = raw.read(CHUNK)
        if not chunk:
            return None
        data = carry + chunk
        start = 0
        while (hit := data.find(GZIP_MAGIC, start)) >= 0:
            at = base + hit
            if _starts_warc_member(raw, at):
                return at
            start = hit + 1
            raw.seek(base + len(data))
        carry = data[-2:]
        base += len(data) - len(carry)
        scanned += len(chunk)
    return None


def _starts_warc_member(raw: IO[bytes], at: int) -> bool:
    here = raw.tell()
    raw.seek(at)
    head = raw.read(4096)
    raw.seek(here)
    try:
        return zlib.decompressobj(31).decompress(head, 16).startswith(b"WARC/")
    except zlib.error:
        return False


# ---------------------------------------------------------------------------------------------------- read

def read(src, part: Partition, stats: ReadStats) -> Iterator[dict[str, Any]]:
    total = size(part.url)
    if total == 0:
        stats.skip_file("empty", url=part.url)
        return
    end = total if part.end < 0 else min(part.end, total)
    with open_raw(part.url, part.start) as raw:
        if codec(part.url) == "gzip":
            records = _gzip_members(src, raw, part.url, part.start, end, stats)
        else:
            records = _stream(src, raw, part.url, stats)
        for offset, record, body in records:
            row = _document(src, record, body, part.url, offset, stats)
            if row is not None:
                yield row


def _gzip_members(src, raw: IO[bytes], url: str, start: int, end: int,
                  stats: ReadStats) -> Iterator[tuple[int, Any, bytes]]:
    """(offset, record) of each wanted record whose gzip member starts in [start, end)."""
    from fastwarc.warc import WarcRecord

    cap = src.max_document_bytes + HEADER_ROOM
    pending = memoryview(b"")  # bytes read from the file but not yet fed (a view: slicing copies nothing)
    pos = start  # the file offset of pending[0]
    while pos < end:
        if not pending:
            chunk = raw.read(CHUNK)
            if not chunk:
                return
            stats.bytes_read += len(chunk)
            pending = memoryview(chunk)
        if pending[:2] != GZIP_MAGIC[:2]:
            found = next_member(raw, pos)
            stats.skip_file("junk_between_records", url=url, offset=pos)
            if found is None:
                return
            raw.seek(found)
            pos, pending = found, memoryview(b"")
            continue
        member_start = pos
        inflater = zlib.decompressobj(31)
        out, out_size, overflow = [], 0, False
        data = pending  # input not yet inflated; it starts at file offset `pos`
        try:
            while True:
                feed = data[:FEED]
                piece = inflater.decompress(feed, CHUNK)  # bounded output: a 100 MB page never sits in memory
                if not overflow and out_size + len(piece) > cap:
                    overflow = True
                    out.append(piece[:max(0, HEADER_ROOM - out_size)])
                elif not overflow:
                    out.append(piece)
                out_size += len(piece)
                if inflater.eof:
                    used = len(feed) - len(inflater.unused_data)
                    pos += used
                    pending = data[used:]
                    break
                used = len(feed) - len(inflater.unconsumed_tail)
                pos += used
                data = data[used:]
                if data:
                    continue
                chunk = raw.read(CHUNK)
                stats.bytes_read += len(chunk)
                data = memoryview(chunk)
                if not data:
                    _count_broken(b"".join(out), src, stats, "truncated", url, member_start)
                    return
        except zlib.error as err:
            _count_broken(b"".join(out), src, stats, "corrupt_record", url, member_start, str(err))
            found = next_member(raw, member_start + 1)
            if found is None:
                return
            raw.seek(found)
            pos, pending = found, memoryview(b"")
            continue
        data = b"".join(out)
        if overflow:
            if _record_type(data) == wanted_type(src):
                stats.record()
                stats.skip("too_large", url=url, offset=member_start, detail=f"{out_size} bytes")
            elif _holds_several_records(data):  # one gzip stream for many records: stream it
                raw.seek(member_start)
                yield from _stream(src, raw, url, stats, base=member_start)
                return
            continue
        yield from _member_records(src, data, url, member_start, stats, WarcRecord)


def _member_records(src, data: bytes, url: str, offset: int, stats: ReadStats,
                    record_cls) -> Iterator[tuple[int, Any, bytes]]:
    """The wanted records of one member's bytes: usually one; a wrong Content-Length is repaired."""
    if not data.startswith(b"WARC/"):
        stats.skip_file("not_a_warc_record", url=url, offset=offset)
        return
    if _holds_several_records(data):
        yield from _stream(src, io.BytesIO(data), url, stats, base=offset, offsets_known=False)
        return
    if _record_type(data) != wanted_type(src):
        return
    stats.record()
    head_end, declared = _header(data)
    if declared is None:
        stats.skip("corrupt_record", url=url, offset=offset, detail="no WARC header block or Content-Length")
        return
    block = len(data) - head_end - 4 - (4 if data.endswith(b"\r\n\r\n") else 0)
    if int(declared.group(1)) != block:
        data = data[: declared.start(1)] + str(block).encode() + data[declared.end(1):]
        stats.repair("content_length")
    try:
        record = record_cls.from_bytes(data)
        if src.format == "warc":
            record.parse_http(auto_decode="all")
        body = record.reader.read()
    except (OSError, ValueError) as err:
        stats.skip("corrupt_record", url=url, offset=offset, detail=str(err))
        return
    yield offset, record, body


def _record_type(data: bytes) -> str | None:
    head_end = data.find(b"\r\n\r\n")
    found = _WARC_TYPE.search(data, 0, head_end if head_end > 0 else 4096)
    return found.group(1).decode("ascii").lower() if found else None


def _header(data: bytes) -> tuple[int, re.Match | None]:
    """Where a record's WARC header block ends, and its Content-Length field (None without one)."""
    head_end = data.find(b"\r\n\r\n")
    return head_end, _CONTENT_LENGTH.search(data, 0, head_end + 2) if head_end > 0 else None


def _holds_several_records(data: bytes) -> bool:
    """True when the bytes hold a whole record followed by another (a gzip stream of many records)."""
    head_end, declared = _header(data)
    if declared is None:
        return False
    after = head_end + 4 + int(declared.group(1)) + 4
    return data[after:after + 5] == b"WARC/"


def _count_broken(data: bytes, src, stats: ReadStats, reason: str, url: str, offset: int, detail: str = "") -> None:
    """A member that ends early or fails to inflate: a lost document if it was a wanted record."""
    if _record_type(data) == wanted_type(src) or not data:
        stats.record()
        stats.skip(reason, url=url, offset=offset, detail=detail)
    else:
        stats.skip_file(reason, url=url, offset=offset, detail=detail)


def _stream(src, raw: IO[bytes], url: str, stats: ReadStats, base: int = 0,
            offsets_known: bool = True) -> Iterator[tuple[int, Any, bytes]]:
    """Records of a file that cannot be read member by member, streamed with FastWARC."""
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    kind = codec(url)
    stream = raw if kind in (None, "gzip", "zstd") else decompress(raw, kind)  # FastWARC reads gzip, zstd
    record_type = WarcRecordType.conversion if src.format == "wet" else WarcRecordType.response
    limit = src.max_document_bytes
    while True:
        last = base
        try:
            for record in ArchiveIterator(stream, record_types=record_type, parse_http=src.format == "warc",
                                          auto_decode="all" if src.format == "warc" else "none"):
                last = base + record.stream_pos if offsets_known and kind in (None, "gzip") else base
                stats.record()
                expected = record.content_length
                body = record.reader.read(limit + 1)
                if len(body) > limit:
                    stats.skip("too_large", url=url, offset=last, detail=f"{expected} bytes")
                    continue
                if len(body) < expected:
                    stats.skip("truncated", url=url, offset=last)
                    continue
                yield last, record, body
            return
        except OSError as err:
            if kind is not None or not hasattr(raw, "seek"):
                stats.skip_file("corrupt_stream", url=url, offset=last, detail=str(err))
                return  # a compressed stream cannot be re-framed past a break
            stats.skip_file("corrupt_record", url=url, offset=last, detail=str(err))
            found = _next_plain_record(raw, last + 1)
            if found is None:
                return
            raw.seek(found)
            base = found


def _next_plain_record(raw: IO[bytes], offset: int) -> int | None:
    raw.seek(offset)
    base, carry = offset, b""
    while chunk := raw.read(CHUNK):
        data = carry + chunk
        hit = _PLAIN_RECORD.search(data)
        if hit:
            return base + hit.start() + (1 if data[hit.start():hit.start() + 1] == b"\n" else 0)
        carry = data[-16:]
        base += len(data) - len(carry)
    return None


# ---------------------------------------------------------------------------------------------------- documents

def _document(src, record, body: bytes, url: str, offset: int, stats: ReadStats) -> dict[str, Any] | None:
    headers = record.headers
    record_id = headers.get("WARC-Record-ID", "") or f"{url}@{offset}"
    target = headers.get("WARC-Target-URI", "")
    date = headers.get("WARC-Date", "")
    meta: dict[str, Any] = {"warc": url, "offset": offset}
    if len(body) > src.max_document_bytes:
        stats.skip("too_large", url=url, offset=offset, detail=f"{len(body)} bytes")
        return None
    if src.format == "wet":
        text = decode_utf8(body, stats).strip()
        if language := headers.get("WARC-Identified-Content-Language"):
            meta["languages"] = language
        if refers := headers.get("WARC-Refers-To"):
            meta["refers_to"] = refers
    else:
        status = record.http_headers.status_code if record.http_headers is not None else None
        if status is not None and not 200 <= status < 300:
            stats.skip("http_status", url=url, offset=offset, detail=str(status))
            return None
        ctype = (record.http_content_type or "").lower() or None
        if not html_text.is_html(ctype, body):
            stats.skip("non_html", url=url, offset=offset, content_type=ctype or "unknown")
            return None
        page = html_text.decode_html(body, record.http_charset, stats)
        try:
            text = html_text.extract_text(page, src.extractor, src.main_content, src.main_content_rules,
                                          src.boilerplate_selectors or html_text.BOILERPLATE_SELECTORS)
        except Exception as err:  # a parser failure on one page must not stop the file
            stats.skip("extract_failed", url=url, offset=offset, detail=f"{type(err).__name__}: {err}")
            return None
        meta["content_type"] = ctype or "text/html"
    if not text:
        stats.skip("empty", url=url, offset=offset)
        return None
    return document(src, source_id=record_id, text=text, url=target, date=date, meta=meta)
