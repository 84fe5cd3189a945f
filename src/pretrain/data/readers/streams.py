"""Opening inputs: local paths or s3:// URLs, compressed by suffix (gzip, bz2, zstd, xz) or not."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
from typing import IO

from pretrain import storage

COMPRESSED_SUFFIXES = {".gz": "gzip", ".gzip": "gzip", ".bz2": "bz2", ".zst": "zstd", ".zstd": "zstd", ".xz": "xz"}


def codec(url: str) -> str | None:
    """The compression of ``url`` from its suffix, or None."""
    lower = url.lower()
    return next((c for s, c in COMPRESSED_SUFFIXES.items() if lower.endswith(s)), None)


def strip_codec(name: str) -> str:
    """``a.jsonl.gz`` -> ``a.jsonl``: the name that tells the format."""
    lower = name.lower()
    for s in COMPRESSED_SUFFIXES:
        if lower.endswith(s):
            return name[: -len(s)]
    return name


def open_raw(url: str, start: int = 0) -> IO[bytes]:
    """The file's bytes as stored, positioned at ``start`` (a range read on S3)."""
    fs, path = storage.filesystem(url)
    try:
        f = fs.open(path, "rb", block_size=8 << 20) if storage.is_remote(url) else open(path, "rb")  # noqa: SIM115
    except FileNotFoundError:
        from pretrain.data.readers.base import InputError

        raise InputError(url, None, "file not found") from None
    if start:
        f.seek(start)
    return f


def decompress(raw: IO[bytes], kind: str | None) -> IO[bytes]:
    """A decompressing reader over ``raw`` (multi-member gzip and multi-stream bz2 included)."""
    if kind is None:
        return raw
    if kind == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if kind == "bz2":
        return bz2.BZ2File(raw, mode="rb")
    if kind == "xz":
        return lzma.LZMAFile(raw, mode="rb")
    if kind == "zstd":
        return io.BufferedReader(_ZstdReader(raw), buffer_size=1 << 20)
    raise ValueError(f"unknown compression {kind!r}")


class _ZstdReader(io.RawIOBase):
    """Multi-frame zstd that, like gzip/bz2/xz, raises ``EOFError`` when the input ends mid-frame.

    (zstandard's own stream reader ends silently there, which would hide a truncated file.)
    """

    def __init__(self, raw: IO[bytes]) -> None:
        import zstandard

        self._new = zstandard.ZstdDecompressor().decompressobj
        self._raw, self._inflater, self._pending, self._started = raw, self._new(), b"", False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._pending:
            chunk = self._raw.read(1 << 20)
            if not chunk:
                if self._started and not self._inflater.eof:
                    raise EOFError("zstd stream ended before the end of its frame (truncated file)")
                return 0
            while chunk:
                if self._inflater.eof:  # the next frame of a multi-frame file
                    self._inflater = self._new()
                self._started = True
                self._pending += self._inflater.decompress(chunk)
                chunk = self._inflater.unused_data if self._inflater.eof else b""
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()


def open_input(url: str) -> IO[bytes]:
    """The file's decompressed bytes, streamed."""
    return decompress(open_raw(url), codec(url))


def size(url: str) -> int:
    """The stored size in bytes; a missing file is an :class:`InputError` naming it."""
    from pretrain.data.readers.base import InputError

    fs, path = storage.filesystem(url)
    try:
        return int(fs.size(path))
    except FileNotFoundError:
        raise InputError(url, None, "file not found") from None
