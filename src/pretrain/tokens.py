"""The token-shard format and the deterministic, resumable loader.

A shard is three files: ``NAME.bin`` (flat token ids, uint16 when the vocabulary fits, else uint32),
``NAME.idx.npy`` (uint64 offsets one past each document's last token) and ``NAME.json`` (dtype,
token/document/byte counts, tokenizer hash, eos id). The header is written last: a shard without it
is incomplete. Shards are memory-mapped; the loader is a pure function of (seed, step, rank).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile

import numpy as np

from pretrain import storage


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


class TokenShardWriter:
    """Appends documents' token ids to a local file, then commits the shard (header last)."""

    def __init__(self, url: str, vocab_size: int, eos_id: int, tokenizer_hash: str) -> None:
        self.url = url
        self.dtype = token_dtype(vocab_size)
        self.header = {"dtype": self.dtype.name, "tokens": 0, "documents": 0, "bytes": 0,
                       "eos_id": eos_id, "vocab_size": vocab_size, "tokenizer_hash": tokenizer_hash}
        fd, self._bin = tempfile.mkstemp(suffix=".bin")
        self._file = os.fdopen(fd, "wb")
        self._ends: list[int] = []

    def add(self, ids: list[int] | np.ndarray, text_bytes: int) -> None:
        arr = np.asarray(ids, dtype=self.dtype)
        self._file.write(arr.tobytes())
        self.header["tokens"] += int(arr.size)
        self.header["documents"] += 1
        self.header["bytes"] += int(text_bytes)
        self._ends.append(self.header["tokens"])

    def close(self) -> dict:
        self._file.close()
        try:
            with storage.atomic_path(self.url + ".bin") as tmp:
                shutil.move(self._bin, tmp)
            with storage.atomic_path(self.url + ".idx.npy") as tmp, open(tmp, "wb") as f:
                np.save(f, np.asarray(self._ends, dtype=np.uint64))
            storage.write_json(self.url + ".json", self.header)
        finally:
            if os.path.exists(self._bin):
                os.unlink(self._bin)
        return dict(self.header)


def read_header(url: str) -> dict:
    return storage.read_json(url + ".json")


@dataclasses.dataclass
class _Mapped:
    tokens: np.ndarray
    header: dict


def open_shard(url: str) -> _Mapped:
    header = read_header(url)
    path = storage.local_copy(url + ".bin")
    tokens = np.memmap(path, dtype=np.dtype(header["dtype"]), mode="r") if header["tokens"] else \
        np.zeros(0, dtype=header["dtype"])
    if tokens.size != header["tokens"]:
        raise ValueError(f"{url}.bin holds {tokens.size} tokens, its header says {header['tokens']}")
    return _Mapped(tokens, header)


class TokenDataset:
    """Fixed-length windows over a split's shards, memory-mapped; remote shards are cached locally."""

    def __init__(self, shard_urls: list[str], seq_len: int) -> None:
        self.seq_len = seq_len
        shards = [open_shard(u) for u in shard_urls]
        self.shards = [s for s in shards if s.tokens.size > seq_len + 1]
        if not self.shards:
            raise ValueError(f"no token shard holds more than seq_len+1={seq_len + 1} tokens: {shard_urls}")
        self.sizes = np.array([s.tokens.size for s in self.shards], dtype=np.int64)
        self.tokens = int(self.sizes.sum())
        self.bytes = int(sum(s.header["bytes"] for s in self.shards))

    def _window(self, shard: int, start: int) -> np.ndarray:
        return np.asarray(self.shards[shard].tokens[start: start + self.seq_len + 1], dtype=np.int64)

    def sample(self, seed: int, step: int, rank: int, batch: int) -> np.ndarray:
        """``batch`` windows of seq_len+1 tokens; the same (seed, step, rank) always gives the same batch."""
        rng = np.random.Generator(np.random.PCG64([seed, step, rank]))
        which = rng.choice(len(self.shards), size=batch, p=self.sizes / self.sizes.sum())
        out = np.empty((batch, self.seq_len + 1), dtype=np.int64)
        for row, shard in enumerate(which):
            start = int(rng.integers(0, self.sizes[shard] - self.seq_len - 1))
            out[row] = self._window(int(shard), start)
        return out

    def sequential(self, batch: int, max_batches: int | None = None):
        """Non-overlapping windows in order, in batches: the same every time, for evaluation."""
        rows: list[np.ndarray] = []
        made = 0
        for shard, size in enumerate(self.sizes):
            for start in range(0, int(size) - self.seq_len - 1, self.seq_len):
                rows.append(self._window(shard, start))
                if len(rows) == batch:
                    yield np.stack(rows)
                    rows, made = [], made + 1
                    if max_batches is not None and made >= max_batches:
                        return
        if rows:
            yield np.stack(rows)


def split_urls(manifest_shards: list, split: str) -> list[str]:
    return [s.url for s in manifest_shards if s.meta.get("split") == split]



__all__ = ["TokenDataset", "TokenShardWriter", "open_shard", "read_header", "split_urls", "token_dtype"]
