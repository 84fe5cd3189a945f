"""bz2 multistream files (many concatenated bz2 streams, as Wikipedia ships them): where streams start,
so a file splits into byte ranges at stream boundaries, and decoding one stream at a time, so a corrupt
stream loses its own pages and reading resumes at the next verified stream header.
"""

from __future__ import annotations

import bz2
import dataclasses
import re
from typing import IO, TYPE_CHECKING

from pretrain.data.readers import streams

if TYPE_CHECKING:
    from pretrain.data.readers.wikipedia.pages import PageSplitter

READ_BYTES = 1 << 20  # raw bytes read at a time
OUT_BYTES = 1 << 20  # decompressed bytes produced at a time (bz2 may expand 50x: bound it)
VERIFY_BYTES = 2 << 20  # raw bytes fed to a candidate stream to prove it decodes
PROBE_BYTES = 16 << 20  # no stream start within this after a split point: a single-stream file

# The bz2 stream header: "BZh", the block-size level, then the first block's magic (pi in BCD).
BZ2_HEADER = re.compile(rb"BZh[1-9]1AY&SY")
HEADER_LEN = 10


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


@dataclasses.dataclass
class _Stream:
    """One bz2 stream's decoding: where it starts, and what became of it."""

    offset: int
    status: str = "ok"  # ok | corrupt | truncated | not_bz2
    detail: str = ""
    next_offset: int = -1  # raw offset right after it (ok only)


class RawReader:
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


def decode_stream(rd: RawReader, splitter: PageSplitter, may_start: bool) -> _Stream:
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
