"""The token-shard format ``pretrain-tokens/1``: writer, header and reader.

A shard is three files: ``NAME.bin`` (flat little-endian token ids, uint16 when the vocabulary fits,
else uint32; EOS after every document), ``NAME.idx.npy`` (uint64, one past each document's last
token) and ``NAME.json``, the header, written last: a shard without it is incomplete. The header's
``checksum`` (xxh3_64 of the .bin bytes) catches a corrupt or truncated shard.
"""

from __future__ import annotations

import array
import contextlib
import os
from typing import Any

import numpy as np
import xxhash

from pretrain import storage

FORMAT = "pretrain-tokens/1"
HEADER_KEYS = ("format", "dtype", "tokens", "documents", "bytes", "eos_id", "vocab_size", "tokenizer_hash",
               "checksum", "source", "split")
_CHUNK = 16 << 20  # bytes per read when streaming a .bin (checksum, export)


class ShardError(ValueError):
    """A token shard is incomplete, corrupt or does not match its header; the message names it."""


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 while every id fits (vocab_size <= 65536), else uint32."""
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    if vocab_size > 1 << 32:
        raise ValueError(f"vocab_size {vocab_size} does not fit uint32 token ids")
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def checksum_of(data: bytes | memoryview | np.ndarray) -> str:
    return "xxh3_64:" + xxhash.xxh3_64(data).hexdigest()


class TokenShardWriter:
    """Streams documents' token ids into one shard; ``close`` publishes it (.bin, .idx.npy, then the header).

    The .bin grows in a temporary file beside the destination (local) or in the temp folder (S3) and its
    checksum is computed while writing. On error use it as a context manager (or call ``abort``): nothing
    is published and an older header at the same URL is already gone, so a half-rewritten shard never reads.
    """

    def __init__(self, url: str, vocab_size: int, eos_id: int, tokenizer_hash: str, *, source: str = "",
                 split: str = "") -> None:
        self.url = str(url)
        self.dtype = token_dtype(vocab_size)
        if not 0 <= eos_id < vocab_size:
            raise ValueError(f"{self.url}: eos_id {eos_id} is outside the vocabulary of {vocab_size}")
        self.vocab_size = vocab_size
        self.header: dict[str, Any] = {"format": FORMAT, "dtype": self.dtype.name, "tokens": 0, "documents": 0,
                                       "bytes": 0, "eos_id": int(eos_id), "vocab_size": int(vocab_size),
                                       "tokenizer_hash": tokenizer_hash, "checksum": "", "source": source,
                                       "split": split}
        storage.remove(self.url + ".json")  # rewriting: the old header must not describe the new data
        self._bin_cm = storage.atomic_path(self.url + ".bin")
        self._bin_path = self._bin_cm.__enter__()
        self._file = open(self._bin_path, "wb", buffering=1 << 20)  # noqa: SIM115 (closed in close/abort)
        self._hash = xxhash.xxh3_64()
        self._ends = array.array("Q")
        self._open = True

    def __enter__(self) -> TokenShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif self._open:
            self.close()

    def _check(self, arr: np.ndarray) -> None:
        if not arr.size:
            return
        if arr.dtype.kind not in "ui":
            raise ShardError(f"{self.url}: token ids must be integers, got {arr.dtype}")
        top = int(arr.max())
        low = int(arr.min()) if arr.dtype.kind == "i" else 0
        if top >= self.vocab_size or low < 0:
            bad = top if top >= self.vocab_size else low
            raise ShardError(f"{self.url}: token id {bad} is outside the vocabulary of {self.vocab_size}")

    def _write(self, arr: np.ndarray) -> None:
        data = np.ascontiguousarray(arr, dtype=self.dtype)
        self._file.write(data.data)
        self._hash.update(data.data)

    def add(self, ids: list[int] | np.ndarray, text_bytes: int) -> None:
        """One document's ids, its EOS already appended; ``text_bytes``: UTF-8 bytes of its text."""
        arr = np.asarray(ids)
        self._check(arr)
        self._write(arr)
        self.header["tokens"] += int(arr.size)
        self.header["documents"] += 1
        self.header["bytes"] += int(text_bytes)
        self._ends.append(self.header["tokens"])

    def add_documents(self, ids: np.ndarray, lengths: np.ndarray, text_bytes: int) -> None:
        """Many documents at once (faster): their ids concatenated (each with its EOS) and their lengths."""
        arr, lengths = np.asarray(ids), np.asarray(lengths, dtype=np.int64)
        if int(lengths.sum()) != arr.size:
            raise ValueError(f"{self.url}: lengths add up to {int(lengths.sum())}, ids hold {arr.size}")
        self._check(arr)
        self._write(arr)
        self._ends.extend((np.cumsum(lengths) + self.header["tokens"]).astype(np.uint64).tolist())
        self.header["tokens"] += int(arr.size)
        self.header["documents"] += int(lengths.size)
        self.header["bytes"] += int(text_bytes)

    def close(self) -> dict[str, Any]:
        """Publish the shard (header last) and return its header."""
        self._file.close()
        self._open = False
        self.header["checksum"] = "xxh3_64:" + self._hash.hexdigest()
        try:
            self._bin_cm.__exit__(None, None, None)
            with storage.atomic_path(self.url + ".idx.npy") as tmp, open(tmp, "wb") as f:
                np.save(f, np.frombuffer(self._ends, dtype=np.uint64) if self._ends else np.zeros(0, np.uint64))
            storage.write_json(self.url + ".json", self.header)
        except BaseException:
            with contextlib.suppress(Exception):
                storage.remove(self.url + ".json")
            raise
        return dict(self.header)

    def abort(self) -> None:
        """Drop everything written so far; nothing is published."""
        if not self._open:
            return
        self._file.close()
        self._open = False
        err = RuntimeError("token shard writer aborted")
        self._bin_cm.__exit__(RuntimeError, err, None)  # the temporary .bin is removed, not published


def read_header(url: str) -> dict[str, Any]:
    """The header of the shard ``url`` (no suffix); a missing or foreign header is a ShardError naming it."""
    try:
        header = storage.read_json(url + ".json")
    except FileNotFoundError:
        raise ShardError(f"{url}: token shard has no header {url}.json (incomplete or missing)") from None
    if header.get("format") != FORMAT:
        raise ShardError(f"{url}: header format {header.get('format')!r}, expected {FORMAT!r}")
    missing = [k for k in HEADER_KEYS if k not in header]
    if missing:
        raise ShardError(f"{url}: header lacks {missing}")
    return header


class TokenShard:
    """A readable shard: ``read(start, count)`` gives ids as stored; local shards are memory-mapped."""

    def __init__(self, url: str, header: dict[str, Any], array: np.ndarray | None = None, remote=None) -> None:
        self.url = url
        self.header = header
        self.dtype = np.dtype(header["dtype"])
        self.size = int(header["tokens"])
        self.eos_id = int(header["eos_id"])
        self.array = array  # local: the memmap (or an empty array)
        self.remote = remote  # s3: a remote.RemoteTokens

    def __len__(self) -> int:
        return self.size

    @property
    def tokens(self) -> np.ndarray:
        """Every id: a memory map for a local shard; a remote one is read whole (prefer ``read``)."""
        return self.array if self.array is not None else self.read(0, self.size)

    def read(self, start: int, count: int) -> np.ndarray:
        if start < 0 or start + count > self.size:
            raise IndexError(f"{self.url}: tokens [{start}, {start + count}) outside [0, {self.size})")
        if self.array is not None:
            return self.array[start:start + count]
        return self.remote.read(start, count)

    def document_ends(self) -> np.ndarray:
        """One past each document's last token (the .idx.npy)."""
        ends = np.load(storage.local_copy(self.url + ".idx.npy")) if not storage.is_remote(self.url) else \
            _load_npy_remote(self.url + ".idx.npy")
        return ends.astype(np.uint64, copy=False)


def _load_npy_remote(url: str) -> np.ndarray:
    import io

    return np.load(io.BytesIO(storage.read_bytes(url)))


def iter_bin_chunks(url: str, chunk: int = _CHUNK):
    """The .bin's bytes in chunks, streamed (local or S3): for checksums and exports."""
    fs, path = storage.filesystem(url + ".bin")
    with fs.open(path, "rb", block_size=chunk) if storage.is_remote(url) else open(path, "rb") as f:
        while data := f.read(chunk):
            yield data


def verify_shard(url: str, header: dict[str, Any] | None = None) -> None:
    """Recompute size and checksum of the .bin; a ShardError names the shard on any mismatch."""
    header = header or read_header(url)
    expected = int(header["tokens"]) * np.dtype(header["dtype"]).itemsize
    fs, path = storage.filesystem(url + ".bin")
    try:
        size = int(fs.size(path))
    except FileNotFoundError:
        raise ShardError(f"{url}: {url}.bin is missing") from None
    if size != expected:
        raise ShardError(f"{url}: {url}.bin holds {size} bytes, its header says {header['tokens']} tokens "
                         f"({expected} bytes): truncated or torn")
    h = xxhash.xxh3_64()
    for data in iter_bin_chunks(url):
        h.update(data)
    got = "xxh3_64:" + h.hexdigest()
    if got != header["checksum"]:
        raise ShardError(f"{url}: checksum {got} does not match the header's {header['checksum']}: corrupt shard")


def verify_shards(shards: list, rank: int = 0, world: int = 1) -> int:
    """Check this rank's share of a manifest's token shards (every ``world``-th from ``rank``): the header's
    checksum is the manifest's and the data hashes to it. A ShardError names the first bad shard; returns how
    many were checked. Spread over the ranks, a training job reads every shard once before it starts."""
    mine = shards[rank::world]
    for shard in mine:
        header = read_header(shard.url)
        if shard.checksum and header.get("checksum") != shard.checksum:
            raise ShardError(f"{shard.url}: its header's checksum {header.get('checksum')} is not the manifest's "
                             f"{shard.checksum}: the shard was replaced after tokenizing")
        verify_shard(shard.url, header)
    return len(mine)


def open_shard(url: str, *, verify: bool = False, cache=None, block_bytes: int | None = None,
               header: dict[str, Any] | None = None) -> TokenShard:
    """Open a shard for reading: local shards are memory-mapped, s3:// shards read on demand in blocks.

    ``verify`` recomputes the checksum (reads the whole .bin once). Without it a local shard's size is
    still checked against its header; a remote one's is checked as blocks arrive. ``cache``: a
    remote.BlockCache shared by many remote shards (one is made per shard otherwise); ``block_bytes``: the
    size of a remote ranged read; ``header``: the shard's header when already read.
    """
    url = str(url)
    header = header or read_header(url)
    if verify:
        verify_shard(url, header)
    dtype = np.dtype(header["dtype"])
    if storage.is_remote(url):
        from pretrain.tokens.remote import DEFAULT_BLOCK_BYTES, RemoteTokens

        remote = RemoteTokens(url, dtype, int(header["tokens"]), cache=cache,
                              block_bytes=block_bytes or DEFAULT_BLOCK_BYTES)
        return TokenShard(url, header, remote=remote)
    path = storage.filesystem(url + ".bin")[1]
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        raise ShardError(f"{url}: {url}.bin is missing") from None
    if size != int(header["tokens"]) * dtype.itemsize:
        raise ShardError(f"{url}: {url}.bin holds {size} bytes, its header says {header['tokens']} tokens "
                         f"({int(header['tokens']) * dtype.itemsize} bytes): truncated or torn")
    arr = np.memmap(path, dtype=dtype, mode="r") if size else np.zeros(0, dtype=dtype)
    return TokenShard(url, header, array=arr)
