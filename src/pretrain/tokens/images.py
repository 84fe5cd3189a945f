"""The image loader: a step's samples are a pure function of (seed, step, rank, world, batch), as TokenLoader's.

It reads the ``samples`` manifest of an image run (Parquet shards of ``id, source, image, text, caption, label``,
``meta.split`` train or val, row groups of at most 256 rows). Global sample g of rank r at step s is
``anchor_samples + (s - anchor_step) * B * W + r * B + i``, as in ``TokenLoader`` (``samples_before`` is shared),
so resuming, on the same or another world size, works the same way.

Order (a windowed shuffle, so reading streams row groups instead of seeking single rows): epoch e = g // N of the
N training samples visits every row group once, in an order permuted by (seed, e); consecutive runs of
``window`` row groups (up to 16 x 256 samples) form a window whose samples are permuted again by (seed, e, window).
A batch thus reads a few row groups, which a small LRU cache keeps (compressed image bytes, decoded per sample),
and every epoch is a new order. Images are decoded with Pillow, their shorter side resized to the stored size S
(``extra["image_size"]``) if it is not already, and center-cropped to S x S, so a batch stacks as uint8
[B, S, S, 3]. Captions are right-padded to ``caption_len`` with ``pad_id`` (the attention mask is 1 on the real
tokens). A sample that does not decode is replaced by the next one of its row group and counted in ``skipped``.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import threading
from collections.abc import Iterator

import numpy as np

from pretrain import storage
from pretrain.tokens.loader import TokenLoader, _mix, _seed_base, permute

_TAG_GROUPS = 0x47524F555053  # "GROUPS"
_TAG_WINDOW = 0x57494E444F57  # "WINDOW"
COLUMNS = ("image", "caption", "label")
DEFAULT_WINDOW = 16  # row groups per shuffle window
DEFAULT_CACHE = 48  # row groups kept (compressed images: a few MiB each at 64 px)


@dataclasses.dataclass(frozen=True)
class SampleShardRef:
    """A samples shard as the manifest lists it: URL, source name and sample count."""

    url: str
    source: str
    rows: int


def sample_refs(manifest_shards: list, split: str) -> list[SampleShardRef]:
    """The shards of one split (``meta["split"]``) of a samples manifest."""
    return [SampleShardRef(s.url, str(s.meta.get("source", "")), int(s.rows)) for s in manifest_shards
            if s.meta.get("split") == split]


@dataclasses.dataclass
class ImageBatch:
    """A step's samples: ``images`` uint8 [B, S, S, 3]; ``captions`` int64 [B, L] and ``attention_mask`` int64
    [B, L] (None for image-only runs); ``labels`` int64 [B] (-1: none); ``samples``: global sample indices."""

    images: np.ndarray
    captions: np.ndarray | None
    attention_mask: np.ndarray | None
    labels: np.ndarray
    samples: np.ndarray

    def inputs(self) -> tuple:
        """The contrastive module's positional inputs, as CPU tensors."""
        import torch

        def tensor(a: np.ndarray | None):
            return None if a is None else torch.from_numpy(a)

        return tensor(self.images), tensor(self.captions), tensor(self.attention_mask)


def decode_square(data: bytes, size: int) -> np.ndarray:
    """Stored image bytes -> uint8 [size, size, 3]: RGB, shorter side resized to ``size``, center-cropped."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        img = img.convert("RGB")
        w, h = img.size
        if min(w, h) != size:
            scale = size / min(w, h)
            img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BICUBIC)
            w, h = img.size
        left, top = (w - size) // 2, (h - size) // 2
        return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)


class _Groups:
    """Row groups of the shards, opened on first use; the last ``cache`` groups read are kept."""

    def __init__(self, refs: list[SampleShardRef], cache: int) -> None:
        import pyarrow.parquet as pq

        self.refs = refs
        self.sizes: list[list[int]] = []
        for ref in refs:  # the footers: each shard's row-group sizes
            with self._open(ref.url) as f:
                meta = pq.ParquetFile(f).metadata
                self.sizes.append([meta.row_group(i).num_rows for i in range(meta.num_row_groups)])
                if meta.num_rows != ref.rows:
                    raise ValueError(f"{ref.url}: the manifest says {ref.rows} samples, the file holds {meta.num_rows}")
        self.cache = cache
        self._cached: collections.OrderedDict[tuple[int, int], dict] = collections.OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _open(url: str):
        fs, path = storage.filesystem(url)
        return fs.open(path, "rb")

    def read(self, shard: int, group: int) -> dict:
        key = (shard, group)
        with self._lock:
            if key in self._cached:
                self._cached.move_to_end(key)
                return self._cached[key]
        import pyarrow.parquet as pq

        with self._open(self.refs[shard].url) as f:
            pf = pq.ParquetFile(f)
            names = [c for c in COLUMNS if c in pf.schema_arrow.names]
            table = pf.read_row_group(group, columns=names)
        data = {"image": table.column("image").to_pylist(),
                "caption": table.column("caption").to_pylist() if "caption" in names else None,
                "label": (table.column("label").fill_null(-1).to_numpy().astype(np.int64) if "label" in names
                          else np.full(table.num_rows, -1, dtype=np.int64))}
        with self._lock:
            self._cached[key] = data
            while len(self._cached) > self.cache:
                self._cached.popitem(last=False)
        return data


class _Samples:
    """Shared by the training loader and the validation batches: decoding and caption padding."""

    def __init__(self, refs: list[SampleShardRef], image_size: int, caption_len: int, pad_id: int, eos_id: int,
                 cache: int) -> None:
        if not refs:
            raise ValueError("the samples manifest lists no shard of this split")
        self.refs = sorted(refs, key=lambda r: (r.source, r.url))
        self.image_size, self.caption_len = int(image_size), int(caption_len)
        self.pad_id, self.eos_id = int(pad_id), int(eos_id)
        self._groups = _Groups(self.refs, cache)
        sizes = [n for per in self._groups.sizes for n in per]
        self.group_sizes = np.array(sizes, dtype=np.int64)
        self.group_shard = np.array([i for i, per in enumerate(self._groups.sizes) for _ in per], dtype=np.int64)
        self.group_index = np.array([j for per in self._groups.sizes for j in range(len(per))], dtype=np.int64)
        self.sources = sorted({r.source for r in self.refs})
        self.group_source = np.array([self.sources.index(self.refs[s].source) for s in self.group_shard.tolist()],
                                     dtype=np.int64)
        self.size = int(self.group_sizes.sum())
        if self.size == 0:
            raise ValueError("the samples shards of this split hold no sample")
        self.skipped: collections.Counter[str] = collections.Counter()

    def _image(self, data: dict, row: int) -> np.ndarray:
        images = data["image"]
        for k in range(len(images)):  # a sample that does not decode: the next one of its row group
            try:
                return decode_square(images[(row + k) % len(images)], self.image_size)
            except Exception:  # Pillow raises many kinds (OSError, ValueError, DecompressionBombError...)
                self.skipped["undecodable_image"] += 1
        raise ValueError("no image of a row group decodes")

    def _caption(self, ids: list[int] | None) -> list[int]:
        ids = list(ids or []) or [self.eos_id]
        if len(ids) > self.caption_len:
            ids = [*ids[:self.caption_len - 1], self.eos_id]
        return ids

    def rows(self, groups: np.ndarray, rows: np.ndarray, samples: np.ndarray) -> ImageBatch:
        """The samples at (global row group, row) pairs, in order."""
        n = len(groups)
        images = np.empty((n, self.image_size, self.image_size, 3), dtype=np.uint8)
        labels = np.empty(n, dtype=np.int64)
        captions = attention = None
        if self.caption_len:
            captions = np.full((n, self.caption_len), self.pad_id, dtype=np.int64)
            attention = np.zeros((n, self.caption_len), dtype=np.int64)
        for i, (g, r) in enumerate(zip(groups.tolist(), rows.tolist(), strict=True)):
            data = self._groups.read(int(self.group_shard[g]), int(self.group_index[g]))
            images[i] = self._image(data, r)
            labels[i] = data["label"][r]
            if captions is not None:
                ids = self._caption(data["caption"][r] if data["caption"] is not None else None)
                captions[i, :len(ids)] = ids
                attention[i, :len(ids)] = 1
        return ImageBatch(images=images, captions=captions, attention_mask=attention, labels=labels, samples=samples)


class ImageLoader(_Samples):
    """Training batches over a split's samples shards, shuffled per epoch, exactly resumable (module docstring)."""

    samples_before = staticmethod(TokenLoader.samples_before)
    samples_of = staticmethod(TokenLoader.samples_of)

    def __init__(self, shards: list[SampleShardRef], seed: int, image_size: int, caption_len: int = 0,
                 pad_id: int = 0, eos_id: int = 0, *, window: int = DEFAULT_WINDOW, cache: int = DEFAULT_CACHE) -> None:
        super().__init__(shards, image_size, caption_len, pad_id, eos_id, max(cache, window + 1))
        self.seed, self.window = int(seed), int(window)
        self.epoch_size = self.size
        self._base = _seed_base(self.seed, _TAG_GROUPS)
        self._window_base = _seed_base(self.seed, _TAG_WINDOW)
        self._epochs: collections.OrderedDict[int, tuple[np.ndarray, np.ndarray]] = collections.OrderedDict()

    def _order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(row groups in this epoch's order, cumulative samples before each position, with the total last)."""
        if epoch not in self._epochs:
            count = len(self.group_sizes)
            order = permute(np.arange(count), count, _mix(self._base ^ np.uint64(epoch))).astype(np.int64)
            cum = np.concatenate([[0], np.cumsum(self.group_sizes[order])]).astype(np.int64)
            self._epochs[epoch] = (order, cum)
            while len(self._epochs) > 2:
                self._epochs.popitem(last=False)
        return self._epochs[epoch]

    def locate(self, samples) -> tuple[np.ndarray, np.ndarray]:
        """(global row group, row within it) of each global sample."""
        g = np.asarray(samples, dtype=np.int64).reshape(-1)
        if g.size and g.min() < 0:
            raise ValueError("sample indices must be >= 0 (a step before the anchor?)")
        groups, rows = np.empty_like(g), np.empty_like(g)
        epochs = g // self.epoch_size
        for epoch in np.unique(epochs).tolist():
            pick = epochs == epoch
            order, cum = self._order(epoch)
            v = g[pick] % self.epoch_size
            k = np.searchsorted(cum, v, side="right") - 1
            first = (k // self.window) * self.window  # the window's first position in the order
            start = cum[first]
            width = cum[np.minimum(first + self.window, len(order))] - start
            key = _mix(self._window_base ^ _mix(np.uint64(epoch) ^ first.astype(np.uint64)))
            w = start + permute(v - start, width, key).astype(np.int64)
            k2 = np.searchsorted(cum, w, side="right") - 1
            groups[pick], rows[pick] = order[k2], w - cum[k2]
        return groups, rows

    def batch(self, step: int, rank: int, world: int, batch_size: int, anchor: tuple[int, int] = (0, 0)) -> ImageBatch:
        """The samples of ``rank`` at ``step``: a pure function of (seed, step, rank, world, batch_size, anchor)."""
        samples = self.samples_of(step, rank, world, batch_size, anchor)
        groups, rows = self.locate(samples)
        return self.rows(groups, rows, samples)

    def sources_of(self, first_sample: int, count: int, chunk: int = 1 << 18) -> dict[str, int]:
        """How many samples of each source the samples [first, first + count) hold."""
        out = np.zeros(len(self.sources), dtype=np.int64)
        n, g, end = self.epoch_size, int(first_sample), int(first_sample) + int(count)
        whole = np.bincount(self.group_source, weights=self.group_sizes, minlength=len(self.sources)).astype(np.int64)
        while g < end:
            if g % n == 0 and end - g >= n:  # whole epochs: every sample once
                epochs = (end - g) // n
                out += whole * epochs
                g += epochs * n
                continue
            stop = min(end, g + chunk, g - g % n + n)
            groups, _ = self.locate(np.arange(g, stop, dtype=np.int64))
            out += np.bincount(self.group_source[groups], minlength=len(self.sources))
            g = stop
        return dict(zip(self.sources, out.tolist(), strict=True))


class ImageBatches(_Samples):
    """Held-out samples in file order, in fixed batches: the same every time (evaluation)."""

    def __init__(self, shards: list[SampleShardRef], image_size: int, caption_len: int = 0, pad_id: int = 0,
                 eos_id: int = 0, *, cache: int = 4) -> None:
        super().__init__(shards, image_size, caption_len, pad_id, eos_id, cache)
        self._cum = np.concatenate([[0], np.cumsum(self.group_sizes)]).astype(np.int64)

    def batches(self, batch: int, max_batches: int | None = None) -> Iterator[ImageBatch]:
        """Batches of ``batch`` samples (the last may be short), at most ``max_batches`` of them."""
        total = -(-self.size // batch)
        if max_batches is not None:
            total = min(total, max_batches)
        for b in range(total):
            samples = np.arange(b * batch, min((b + 1) * batch, self.size), dtype=np.int64)
            groups = np.searchsorted(self._cum, samples, side="right") - 1
            yield self.rows(groups, samples - self._cum[groups], samples)


def image_data(manifest, seed: int, caption_len: int) -> tuple[ImageLoader, ImageBatches]:
    """(training loader, validation batches) of an image run's samples manifest (``kind == "samples"``)."""
    if manifest.kind != "samples":
        raise ValueError(f"{manifest.root}: an image objective trains on a samples manifest, this one is "
                         f"{manifest.kind!r} (re-run the data steps with this recipe)")
    extra = manifest.extra
    size = int(extra["image_size"])
    eos = int(extra.get("eos_id") or 0)
    pad = extra.get("pad_id")
    pad = eos if pad is None else int(pad)
    captions = caption_len if extra.get("modality") == "image_text" else 0
    train = ImageLoader(sample_refs(manifest.shards, "train"), seed, size, captions, pad, eos)
    val = ImageBatches(sample_refs(manifest.shards, "val"), size, captions, pad, eos)
    return train, val
