"""Image samples in the staged dedup: exact keys from ``image_hash``, near copies by 64-bit pHash within a distance.

Exact: the sample's ``image_hash`` (a hash of its decoded pixels and size, so re-encodings of one picture share it)
is the key, hashed like a text into the same prefix shards. Near: two pHashes at most ``d`` bits apart
(``dedup.image_distance``) agree on at least one of any ``d + 1`` disjoint chunks of their 64 bits (pigeonhole:
``d`` differing bits touch at most ``d`` chunks). So band ``b`` is chunk ``b`` of the pHash: equal chunks make a
candidate pair, and the cluster stage keeps a pair when the popcount of the XOR is at most ``d``. No near copy
within the distance is missed; the pairs a bucket star leaves out are those of a chunk value shared by more than
``buckets.ALL_PAIRS_MAX`` images (such a pair still meets in its other chunks unless they differ there).
A cluster keeps its largest original image (width * height), ties the earliest (``representative: longest``).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pretrain.data.dedup.minhash import _MUL, _mix

BITS = 64
COLUMNS = ["image_hash", "phash", "width", "height"]  # what the sketch reads of a samples shard


def chunks(distance: int) -> list[tuple[int, int]]:
    """``distance + 1`` disjoint (shift, width) chunks covering the 64 bits, as even as can be."""
    n = distance + 1
    widths = [BITS // n + (i < BITS % n) for i in range(n)]
    shifts = np.cumsum([0, *widths[:-1]]).tolist()
    return list(zip(shifts, widths, strict=True))


def band_keys(phash: np.ndarray, distance: int) -> np.ndarray:
    """(n, distance + 1) uint64: chunk ``b`` of each pHash, mixed with ``b`` (a bijection: equal chunks, equal
    keys) so the keys spread over all 64 bits as the bucket stage's key ranges expect."""
    bits = np.asarray(phash, np.int64).view(np.uint64)
    out = np.empty((len(bits), distance + 1), np.uint64)
    for b, (shift, width) in enumerate(chunks(distance)):
        mask = np.uint64((1 << width) - 1)
        salt = np.uint64((b + 1) * int(_MUL) & (1 << 64) - 1)
        out[:, b] = _mix(((bits >> np.uint64(shift)) & mask) ^ salt)
    return out


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bits that differ between paired 64-bit hashes (int64 bit patterns)."""
    x = np.asarray(a, np.int64).view(np.uint64) ^ np.asarray(b, np.int64).view(np.uint64)
    return np.bitwise_count(x).astype(np.int64)


def exact_rows(hashes: pa.Array) -> np.ndarray:
    """The rows that have an ``image_hash`` (an empty one is no key: such samples never match each other)."""
    return pc.greater(pc.binary_length(hashes.fill_null("")), 0).to_numpy(zero_copy_only=False)


def area(width: pa.Array, height: pa.Array) -> np.ndarray:
    w = width.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    h = height.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    return w * h
