"""Reading s3:// token shards on demand: ranged GETs in fixed blocks, a bounded LRU, background prefetch.

A shard is never downloaded whole. Reads go through a ``BlockCache``: blocks of ``block_bytes`` are
fetched with one ranged GET each (``cat_file(start, end)`` on the filesystem ``pretrain.storage``
builds, so endpoint and credentials are the standard AWS environment), kept in memory under a byte
budget (least recently used first out), and deduplicated while in flight. The loader asks for the
blocks of its next steps with ``prefetch``; a pool of threads fetches them, so after warm-up a step
finds its blocks in memory.
"""

from __future__ import annotations

import collections
import threading
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from pretrain import storage

DEFAULT_BLOCK_BYTES = 64 << 10  # random windows of a few KiB: small blocks keep read amplification low
DEFAULT_CACHE_BYTES = 512 << 20
DEFAULT_WORKERS = 16


class BlockCache:
    """Blocks keyed by (shard url, block index), least recently used evicted past ``budget_bytes``."""

    def __init__(self, budget_bytes: int = DEFAULT_CACHE_BYTES, workers: int = DEFAULT_WORKERS) -> None:
        self.budget = int(budget_bytes)
        self._blocks: collections.OrderedDict[tuple[str, int], bytes] = collections.OrderedDict()
        self._inflight: dict[tuple[str, int], Future] = {}
        self._bytes = 0
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pretrain-tokens-io")
        self.hits = self.misses = self.fetched_bytes = 0

    @property
    def cached_bytes(self) -> int:
        return self._bytes

    def submit(self, fn, *args) -> Future:
        """Run ``fn`` on the I/O threads (the loader's prefetch planning uses them too)."""
        return self._pool.submit(fn, *args)

    def _start(self, key: tuple[str, int], fetch) -> Future:
        """The future of ``key``'s block (cached, in flight, or started now). Caller holds the lock."""
        fut = self._inflight.get(key)
        if fut is None:
            fut = self._pool.submit(self._load, key, fetch)
            self._inflight[key] = fut
        return fut

    def _load(self, key: tuple[str, int], fetch) -> bytes:
        try:
            data = fetch(key[1])
        except BaseException:
            with self._lock:
                self._inflight.pop(key, None)  # a later read retries
            raise
        with self._lock:
            self._inflight.pop(key, None)
            if key not in self._blocks:
                self._blocks[key] = data
                self._bytes += len(data)
                self.fetched_bytes += len(data)
                while self._bytes > self.budget and len(self._blocks) > 1:
                    _, old = self._blocks.popitem(last=False)
                    self._bytes -= len(old)
        return data

    def prefetch(self, keys, fetch) -> None:
        """Start fetching the blocks not yet cached or in flight; returns at once."""
        with self._lock:
            for key in keys:
                if key not in self._blocks:
                    self._start(key, fetch)

    def get(self, key: tuple[str, int], fetch) -> bytes:
        """The block's bytes, waiting for its fetch if needed."""
        with self._lock:
            data = self._blocks.get(key)
            if data is not None:
                self._blocks.move_to_end(key)
                self.hits += 1
                return data
            self.misses += 1
            fut = self._start(key, fetch)
        return fut.result()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class RemoteTokens:
    """The token ids of one remote .bin, read in blocks through a ``BlockCache``."""

    def __init__(self, url: str, dtype: np.dtype, tokens: int, cache: BlockCache | None = None,
                 block_bytes: int = DEFAULT_BLOCK_BYTES) -> None:
        self.url = url
        self.dtype = np.dtype(dtype)
        self.tokens = int(tokens)
        self.nbytes = self.tokens * self.dtype.itemsize
        self.block = int(block_bytes) - int(block_bytes) % self.dtype.itemsize  # blocks hold whole tokens
        self.cache = cache or BlockCache()
        self._fs, self._path = storage.filesystem(url + ".bin")

    def _fetch(self, index: int) -> bytes:
        start = index * self.block
        end = min(start + self.block, self.nbytes)
        data = self._fs.cat_file(self._path, start=start, end=end)
        if len(data) != end - start:
            from pretrain.tokens.format import ShardError

            raise ShardError(f"{self.url}: {self.url}.bin returned {len(data)} bytes for [{start}, {end}): "
                             f"shorter than its header's {self.tokens} tokens (truncated)")
        return data

    def blocks(self, start: int, count: int) -> range:
        """Block indices holding tokens [start, start+count)."""
        if count <= 0:
            return range(0)
        first = start * self.dtype.itemsize // self.block
        last = ((start + count) * self.dtype.itemsize - 1) // self.block
        return range(first, last + 1)

    def prefetch(self, start: int, count: int) -> None:
        self.cache.prefetch([(self.url, b) for b in self.blocks(start, count)], self._fetch)

    def read(self, start: int, count: int) -> np.ndarray:
        blocks = self.blocks(start, count)
        if not blocks:
            return np.zeros(0, self.dtype)
        if len(blocks) > 1:
            self.prefetch(start, count)  # a window spanning blocks fetches them in parallel
        per_block = self.block // self.dtype.itemsize
        parts = []
        for b in blocks:  # only the wanted tokens of each block are copied
            data = np.frombuffer(self.cache.get((self.url, b), self._fetch), dtype=self.dtype)
            lo, hi = max(start, b * per_block) - b * per_block, min(start + count, (b + 1) * per_block) - b * per_block
            parts.append(data[lo:hi])
        return parts[0] if len(parts) == 1 else np.concatenate(parts)
