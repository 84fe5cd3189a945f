"""The deterministic, resumable loader: the batch of a step is a pure function of (seed, step, rank, world).

Windows: a window is ``seq_len + 1`` consecutive tokens of one shard starting at ``k * seq_len``
(k = 0 .. (tokens-1)//seq_len - 1), packed across documents, never across shards. A shard shorter
than one window is counted in ``skipped_shards``.

Mixture: source k has W_k windows and plans n_k = round(epochs_k * W_k) per epoch. Its j-th planned
window is repeat r = j // W_k, offset j % W_k mapped through a Feistel permutation keyed by
(seed, source, r): epochs > 1 repeat every window, a partial repeat (or epochs < 1) takes a random
subset. The epoch is the concatenation of the sources' planned windows, N = sum n_k.

Order: global sample g is epoch e = g // N, position p = g % N, shuffled to v = feistel(seed, e)(p),
a bijection on [0, N) computed on the fly (cycle-walking), never materialized. At step s, rank r of
world W with per-rank batch B reads samples g = anchor_sample + (s - anchor_step) * B * W + r * B + i.
Ranks are disjoint and no window repeats within an epoch beyond planned up-sampling. Resuming with
the same world size needs only the step; with another world size pass ``anchor=(step, samples)``
where samples = ``samples_before(step, old_world, B, old_anchor)``: the stream continues exactly.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import xxhash

from pretrain import storage
from pretrain.tokens.format import ShardError, TokenShard, open_shard, read_header
from pretrain.tokens.remote import DEFAULT_BLOCK_BYTES, DEFAULT_CACHE_BYTES, DEFAULT_WORKERS, BlockCache

_U64 = np.uint64
_TAG_EPOCH = 0x45504F4348  # "EPOCH"
_TAG_SOURCE = 0x534F55524345  # "SOURCE"
MAX_OPEN_SHARDS = 512
ROUNDS = 6  # unbalanced rounds: a few more than Luby-Rackoff's four
_ROUND_CONSTANTS = [_U64(((i + 1) * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF) for i in range(ROUNDS)]
_M1, _M2, _S32, _S64 = _U64(0xBF58476D1CE4E5B9), _U64(0x94D049BB133111EB), _U64(32), _U64(64)


@dataclasses.dataclass(frozen=True)
class ShardRef:
    """A token shard as the tokens manifest lists it: URL (no suffix), source name and token count."""

    url: str
    source: str
    tokens: int


@dataclasses.dataclass
class Batch:
    """A step's rows. ``tokens``: [batch, seq_len+1] int64 (inputs ``[:, :-1]``, targets ``[:, 1:]``).

    ``document_ids`` (only with document masking): [batch, seq_len+1] int32, the document each token
    belongs to within its row (0 at the row's start, +1 after every EOS, the EOS itself ends its
    document), so attention can be restricted to equal ids. ``samples``: the global sample indices.
    """

    tokens: np.ndarray
    samples: np.ndarray
    document_ids: np.ndarray | None = None


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer on uint64 arrays (wrapping arithmetic)."""
    x = x ^ (x >> _U64(30))
    x = x * _U64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> _U64(27))
    x = x * _U64(0x94D049BB133111EB)
    return x ^ (x >> _U64(31))


def _u64(values) -> np.ndarray:
    return np.atleast_1d(np.asarray(values)).astype(np.uint64)


def _seed_base(seed: int, tag: int) -> np.ndarray:
    return _mix(np.array([(seed & 0xFFFFFFFFFFFFFFFF) ^ tag], dtype=np.uint64))


def _encrypt(x: np.ndarray, a: np.ndarray, b: np.ndarray, round_keys: list[np.ndarray]) -> np.ndarray:
    """Feistel rounds on (a+b)-bit values: (hi, lo) -> (lo, hi ^ F(lo)), each round a bijection."""
    mask_b, top = (_U64(1) << b) - _U64(1), _S64 - a
    for rk in round_keys:  # F(lo) = the top `a` bits of a multiply-xorshift hash of (lo ^ round key)
        hi, lo = x >> b, x & mask_b
        f = (lo ^ rk) * _M1
        f = ((f ^ (f >> _S32)) * _M2) >> top
        x = (lo << a) | (hi ^ f)
    return x


def permute(x, n, key) -> np.ndarray:
    """A keyed bijection on [0, n) applied element-wise; x, n and key broadcast (uint64 results).

    A Feistel network on the bit width of n-1 (at least 2 bits), cycle-walking until the value falls
    back into [0, n): a permutation for every (n, key), evaluated without a table, < 2 steps on average.
    """
    x, n, key = np.broadcast_arrays(_u64(x), _u64(n), _u64(key))
    if x.size == 0:
        return x.astype(np.uint64)
    if np.any(x >= n):
        raise ValueError("permute: every x must be < n")
    bits = np.maximum(np.frexp(n.astype(np.float64) - 1.0)[1], 2).astype(np.uint64)  # bit length of n-1
    a = (bits + _U64(1)) >> _U64(1)
    b = bits - a
    keys = [_mix(key + c) for c in _ROUND_CONSTANTS]
    out = _encrypt(x, a, b, keys)
    outside = out >= n
    while x.size <= 4096 and outside.any():  # small batches: whole-array steps cost less than indexing
        out = np.where(outside, _encrypt(out, a, b, keys), out)
        outside = out >= n
    todo = np.flatnonzero(outside)
    while todo.size:
        out[todo] = _encrypt(out[todo], a[todo], b[todo], [k[todo] for k in keys])
        todo = todo[out[todo] >= n[todo]]
    return out


def source_hash(source: str) -> int:
    return xxhash.xxh64_intdigest(source.encode("utf-8"))


def split_urls(manifest_shards: list, split: str) -> list[str]:
    """The URLs of a tokens manifest's shards of one split."""
    return [s.url for s in manifest_shards if s.meta.get("split") == split]


def shard_refs(manifest_shards: list, split: str) -> list[ShardRef]:
    """The ShardRefs of a tokens manifest's shards of one split (source "" when the meta names none)."""
    return [ShardRef(s.url, str(s.meta.get("source", "")), int(s.rows)) for s in manifest_shards
            if s.meta.get("split") == split]


def mixture_epochs(manifest_extra: dict) -> dict[str, float] | None:
    """Per-source epochs from a tokens manifest's ``extra["mixture"]``; None when it plans none."""
    mixture = manifest_extra.get("mixture") or {}
    epochs = {src: float(m["epochs"]) for src, m in mixture.items() if isinstance(m, dict) and "epochs" in m}
    return epochs or None


class _Shards:
    """Shards opened on first use; remote ones share one block cache and its I/O threads."""

    def __init__(self, refs: list[ShardRef], block_bytes: int, cache_bytes: int, workers: int) -> None:
        self.refs = refs
        self.remote = any(storage.is_remote(r.url) for r in refs)
        self.cache = BlockCache(cache_bytes, workers) if self.remote else None
        # Header reads get their own threads: I/O-pool tasks wait on them, so they must not queue behind those tasks.
        self._opener = ThreadPoolExecutor(8, thread_name_prefix="pretrain-tokens-open") if self.remote else None
        self.block_bytes = block_bytes
        self._open: collections.OrderedDict[int, TokenShard] = collections.OrderedDict()
        self._headers: dict[int, dict] = {}  # kept when a shard is closed: reopening costs no header read
        self.max_open = MAX_OPEN_SHARDS
        self._lock = threading.Lock()

    def get(self, i: int) -> TokenShard:
        with self._lock:
            shard = self._open.get(i)
            if shard is not None:
                self._open.move_to_end(i)
                return shard
        ref = self.refs[i]
        shard = open_shard(ref.url, cache=self.cache, block_bytes=self.block_bytes, header=self._headers.get(i))
        if shard.size != ref.tokens:
            raise ShardError(f"{ref.url}: the tokens manifest says {ref.tokens} tokens, its header {shard.size}")
        with self._lock:
            self._headers[i] = shard.header
            shard = self._open.setdefault(i, shard)
            if len(self._open) > self.max_open:  # each memory map holds a file descriptor: keep a bounded set
                self._open.popitem(last=False)
            return shard

    def open_all(self, shard_idx: np.ndarray) -> None:
        """Open the shards not yet open, in parallel on the I/O threads (remote headers are one GET each)."""
        todo = [i for i in np.unique(shard_idx).tolist() if i not in self._open]
        if len(todo) > 1 and self._opener is not None:
            for fut in [self._opener.submit(self.get, i) for i in todo]:
                fut.result()

    def prefetch(self, shard_idx: np.ndarray, starts: np.ndarray, count: int) -> None:
        self.open_all(shard_idx)
        for i, s in zip(shard_idx.tolist(), starts.tolist(), strict=True):
            shard = self.get(i)
            if shard.remote is not None:
                shard.remote.prefetch(s, count)

    def read_rows(self, shard_idx: np.ndarray, starts: np.ndarray, count: int) -> np.ndarray:
        out = np.empty((len(starts), count), dtype=np.int64)
        if self.remote:
            self.prefetch(shard_idx, starts, count)  # every row's blocks in flight at once
        for row, (i, s) in enumerate(zip(shard_idx.tolist(), starts.tolist(), strict=True)):
            out[row] = self.get(i).read(s, count)
        return out

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()
            self._opener.shutdown(wait=False, cancel_futures=True)


def document_ids(tokens: np.ndarray, eos_id: int | np.ndarray) -> np.ndarray:
    """Per-token document index within each row: 0 at the start, +1 after every EOS."""
    eos = np.asarray(eos_id).reshape(-1, 1) if np.ndim(eos_id) else eos_id
    ids = np.zeros(tokens.shape, dtype=np.int32)
    np.cumsum(tokens[:, :-1] == eos, axis=1, dtype=np.int32, out=ids[:, 1:])
    return ids


class TokenLoader:
    """Training batches over a split's shards, globally shuffled, mixed per source, exactly resumable.

    Holds no position: ``batch(step, rank, world, batch_size)`` computes its samples from the step.
    With s3:// shards it reads blocks on demand and prefetches the next ``prefetch_steps`` steps'
    windows in the background (those steps are assumed to follow with the same rank/world/batch).
    """

    def __init__(self, shards: list[ShardRef], seq_len: int, seed: int, epochs: dict[str, float] | None = None,
                 document_masking: bool = False, prefetch_steps: int = 2, *,
                 block_bytes: int | None = None, cache_bytes: int = DEFAULT_CACHE_BYTES,
                 io_workers: int = DEFAULT_WORKERS) -> None:
        if seq_len < 1:
            raise ValueError(f"seq_len must be positive, got {seq_len}")
        if block_bytes is None:  # S3 blocks: small (little read amplification), >= 2 windows of uint32 ids
            block_bytes = max(DEFAULT_BLOCK_BYTES, 1 << math.ceil(math.log2(8 * (seq_len + 1))))
        self.seq_len, self.seed = int(seq_len), int(seed)
        self.document_masking, self.prefetch_steps = document_masking, int(prefetch_steps)
        refs = sorted(shards, key=lambda r: (r.source, r.url))
        windows = np.array([max(0, (int(r.tokens) - 1) // self.seq_len) for r in refs], dtype=np.int64)
        self.skipped_shards = [r.url for r, w in zip(refs, windows, strict=True) if w == 0]
        kept = [r for r, w in zip(refs, windows, strict=True) if w > 0]
        self.shards = kept
        self._shard_cum = np.concatenate([[0], np.cumsum(windows[windows > 0])]).astype(np.int64)
        self.sources = sorted({r.source for r in refs})
        avail = {s: 0 for s in self.sources}
        for r, w in zip(refs, windows.tolist(), strict=True):
            avail[r.source] += w
        epochs = dict(epochs or {})
        unknown = sorted(set(epochs) - set(self.sources))
        if unknown:
            raise ValueError(f"epochs for unknown source(s) {unknown}; the shards' sources are {self.sources}")
        for src, e in epochs.items():
            if not (e >= 0 and math.isfinite(e)):
                raise ValueError(f"epochs[{src!r}] must be a finite number >= 0, got {e}")
        self._avail = np.array([avail[s] for s in self.sources], dtype=np.int64)
        self._planned = np.array([round(epochs.get(s, 1.0) * avail[s]) for s in self.sources], dtype=np.int64)
        self._planned_cum = np.concatenate([[0], np.cumsum(self._planned)]).astype(np.int64)
        self._src_base = np.concatenate([[0], np.cumsum(self._avail)[:-1]]).astype(np.int64)
        self._epoch_base = _seed_base(self.seed, _TAG_EPOCH)
        src_hash = np.array([source_hash(s) for s in self.sources], dtype=np.uint64)
        self._source_base = _mix(_seed_base(self.seed, _TAG_SOURCE) ^ src_hash)  # keyed by (seed, source)
        self.epoch_size = int(self._planned.sum())
        if self.epoch_size == 0:
            why = (f"{len(self.skipped_shards)} of {len(refs)} shards are shorter than seq_len+1={self.seq_len + 1} "
                   f"tokens ({self.skipped_shards[:3]}...)") if refs else "no shards"
            raise ValueError(f"the loader has no window to sample: {why}")
        self._io = _Shards(kept, block_bytes, cache_bytes, io_workers)
        self._prefetched: collections.OrderedDict[tuple, None] = collections.OrderedDict()

    # -- the sample -> window map -------------------------------------------------------------------

    def windows_per_source(self) -> dict[str, int]:
        """Windows available per source (W_k)."""
        return dict(zip(self.sources, self._avail.tolist(), strict=True))

    def planned_per_source(self) -> dict[str, int]:
        """Windows planned per source per epoch (n_k = round(epochs_k * W_k))."""
        return dict(zip(self.sources, self._planned.tolist(), strict=True))

    def _positions(self, samples: np.ndarray) -> np.ndarray:
        """Virtual epoch positions v of global samples."""
        n = self.epoch_size
        return permute(samples % n, n, _mix(self._epoch_base ^ (samples // n).astype(np.uint64))).astype(np.int64)

    def window_index(self, samples) -> np.ndarray:
        """Global window index (over kept shards, in (source, url) order) of each global sample."""
        g = np.asarray(samples, dtype=np.int64).reshape(-1)
        if g.size and g.min() < 0:
            raise ValueError("sample indices must be >= 0 (a step before the anchor?)")
        v = self._positions(g)
        k = np.searchsorted(self._planned_cum, v, side="right") - 1
        j = v - self._planned_cum[k]
        avail = self._avail[k]
        key = _mix(self._source_base[k] ^ (j // avail).astype(np.uint64))  # keyed by (seed, source, repeat)
        w = permute(j % avail, avail, key).astype(np.int64)
        return self._src_base[k] + w

    def locate(self, samples) -> tuple[np.ndarray, np.ndarray]:
        """(index into ``self.shards``, first token) of each global sample's window."""
        gw = self.window_index(samples)
        shard = np.searchsorted(self._shard_cum, gw, side="right") - 1
        return shard, (gw - self._shard_cum[shard]) * self.seq_len

    def sources_of(self, first_sample: int, count: int, chunk: int = 1 << 20) -> dict[str, int]:
        """How many windows of each source the samples [first, first+count) hold (realized mixture)."""
        out = np.zeros(len(self.sources), dtype=np.int64)
        n, g, end = self.epoch_size, int(first_sample), int(first_sample) + int(count)
        while g < end:
            epoch_start = g - g % n
            stop = min(end, epoch_start + n)
            if stop - g == n:  # a whole epoch: exactly the plan
                full = (end - g) // n
                out += self._planned * full
                g += full * n
            elif stop - g > n // 2:  # most of an epoch: the plan less the rest, which is shorter to count
                out += self._planned - self._count(epoch_start, g, chunk) - self._count(stop, epoch_start + n, chunk)
                g = stop
            else:
                out += self._count(g, stop, chunk)
                g = stop
        return dict(zip(self.sources, out.tolist(), strict=True))

    def _count(self, first: int, stop: int, chunk: int) -> np.ndarray:
        out = np.zeros(len(self.sources), dtype=np.int64)
        for lo in range(first, stop, chunk):
            v = self._positions(np.arange(lo, min(stop, lo + chunk), dtype=np.int64))
            out += np.bincount(np.searchsorted(self._planned_cum, v, side="right") - 1, minlength=len(self.sources))
        return out

    @staticmethod
    def samples_before(step: int, world: int, batch_size: int, anchor: tuple[int, int] = (0, 0)) -> int:
        """Global samples consumed before ``step``: save it with the step to resume on another world size."""
        return int(anchor[1]) + (int(step) - int(anchor[0])) * int(batch_size) * int(world)

    @staticmethod
    def samples_of(step: int, rank: int, world: int, batch_size: int, anchor: tuple[int, int] = (0, 0)) -> np.ndarray:
        """The global sample indices of ``rank`` at ``step`` (the image loader shares this numbering)."""
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside world of size {world}")
        first = TokenLoader.samples_before(step, world, batch_size, anchor) + rank * batch_size
        if first < 0:
            raise ValueError(f"step {step} is before the anchor {anchor}")
        return np.arange(first, first + batch_size, dtype=np.int64)

    # -- reading ------------------------------------------------------------------------------------

    def batch(self, step: int, rank: int, world: int, batch_size: int, anchor: tuple[int, int] = (0, 0)) -> Batch:
        """The rows of ``rank`` at ``step``: a pure function of (seed, step, rank, world, batch_size, anchor)."""
        samples = self.samples_of(step, rank, world, batch_size, anchor)
        shard, start = self.locate(samples)
        tokens = self._io.read_rows(shard, start, self.seq_len + 1)  # starts this step's missing blocks first
        if self._io.remote:  # then the next steps', while the caller computes (the I/O threads share the GIL)
            self._plan_prefetch(step, rank, world, batch_size, anchor)
        doc = None
        if self.document_masking:
            eos = np.array([self._io.get(i).eos_id for i in shard.tolist()], dtype=np.int64)
            doc = document_ids(tokens, eos)
        return Batch(tokens=tokens, samples=samples, document_ids=doc)

    def _plan_prefetch(self, step: int, rank: int, world: int, batch_size: int, anchor: tuple[int, int]) -> None:
        ahead = []
        for s in range(step + 1, step + 1 + self.prefetch_steps):
            key = (s, rank, world, batch_size, tuple(anchor))
            if key not in self._prefetched:
                self._prefetched[key] = None
                ahead.append(s)
        while len(self._prefetched) > 4 * max(1, self.prefetch_steps):
            self._prefetched.popitem(last=False)
        if not ahead:
            return

        def plan() -> None:
            samples = np.concatenate([self.samples_of(s, rank, world, batch_size, anchor) for s in ahead])
            shard, start = self.locate(samples)
            self._io.prefetch(shard, start, self.seq_len + 1)

        self._io.cache.submit(plan)

    @property
    def io_stats(self) -> dict[str, int]:
        """Block cache counters (remote shards): hits, misses, fetched and cached bytes."""
        c = self._io.cache
        if c is None:
            return {}
        return {"hits": c.hits, "misses": c.misses, "fetched_bytes": c.fetched_bytes, "cached_bytes": c.cached_bytes}

    def close(self) -> None:
        self._io.close()

    def __enter__(self) -> TokenLoader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class SequentialWindows:
    """Non-overlapping windows of the shards in the given order, in batches: the same every time (evaluation)."""

    def __init__(self, shards: Iterable[ShardRef | str], seq_len: int, *, block_bytes: int = 4 << 20,
                 cache_bytes: int = 256 << 20, io_workers: int = 8) -> None:
        self.seq_len = int(seq_len)
        refs: list[ShardRef] = []
        self.headers: list[dict] = []
        for s in shards:
            url = s.url if isinstance(s, ShardRef) else str(s)
            header = read_header(url)
            refs.append(s if isinstance(s, ShardRef) else ShardRef(url, str(header["source"]), int(header["tokens"])))
            self.headers.append(header)
        windows = [max(0, (int(r.tokens) - 1) // self.seq_len) for r in refs]
        self.skipped_shards = [r.url for r, w in zip(refs, windows, strict=True) if w == 0]
        kept = [i for i, w in enumerate(windows) if w > 0]
        if not kept:
            raise ValueError(f"no token shard holds seq_len+1={self.seq_len + 1} tokens: {[r.url for r in refs]}")
        self.shards = [refs[i] for i in kept]
        self._windows = np.array([windows[i] for i in kept], dtype=np.int64)
        self.windows = int(self._windows.sum())
        self.tokens = int(sum(int(self.headers[i]["tokens"]) for i in kept))
        self.bytes = int(sum(int(self.headers[i]["bytes"]) for i in kept))
        self._io = _Shards(self.shards, block_bytes, cache_bytes, io_workers)

    def _rows(self, first: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        cum = np.concatenate([[0], np.cumsum(self._windows)])
        w = np.arange(first, min(first + count, self.windows), dtype=np.int64)
        shard = np.searchsorted(cum, w, side="right") - 1
        return shard, (w - cum[shard]) * self.seq_len

    def batches(self, batch: int, max_batches: int | None = None) -> Iterator[np.ndarray]:
        """[<=batch, seq_len+1] int64 arrays (the last may be short), at most ``max_batches`` of them."""
        total = -(-self.windows // batch)
        if max_batches is not None:
            total = min(total, max_batches)
        for b in range(total):
            if self._io.remote and b + 1 < total:
                self._io.cache.submit(self._io.prefetch, *self._rows((b + 1) * batch, batch), self.seq_len + 1)
            yield self._io.read_rows(*self._rows(b * batch, batch), self.seq_len + 1)

    def close(self) -> None:
        self._io.close()
