"""Export token shards to Megatron-LM's indexed dataset (``PREFIX.bin`` + ``PREFIX.idx``), streaming.

The .idx (megatron/core/datasets/indexed_dataset.py, ``_IndexWriter``) is, little-endian:
``b"MMIDIDX\\x00\\x00"``, version ``<Q`` = 1, dtype code ``<B`` (8 uint16, 4 int32), sequence count
``<Q``, document-index count ``<Q``, then int32 sequence lengths, int64 byte pointers into the .bin,
and int64 document indices (0, then the sequence count after each document). One sequence per
document here (its EOS included), so the document indices are 0..n. Megatron has no uint32: ids of
vocabularies above 65,536 are written as int32.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import xxhash

from pretrain import storage
from pretrain.tokens.format import ShardError, TokenShard, iter_bin_chunks, open_shard

MAGIC = b"MMIDIDX\x00\x00"
DTYPE_CODES = {"uint8": 1, "int8": 2, "int16": 3, "int32": 4, "int64": 5, "float64": 6, "float32": 7, "uint16": 8}
_CHUNK = 1 << 20  # documents per write of the index arrays


def _out_dtype(dtype: np.dtype) -> np.dtype:
    return np.dtype("<u2") if np.dtype(dtype).itemsize == 2 else np.dtype("<i4")


def export_megatron(shard_urls: list[str], out_prefix: str) -> dict[str, Any]:
    """Write ``out_prefix.bin`` and ``out_prefix.idx`` (local or s3://) from token shards, one at a time.

    Every shard's checksum is verified while its tokens stream through; the .idx is written last.
    Returns {"bin", "idx", "dtype", "sequences", "documents", "tokens"}.
    """
    shards: list[TokenShard] = [open_shard(u) for u in shard_urls]
    if not shards:
        raise ValueError("export_megatron: no shards")
    dtypes = {s.dtype.name for s in shards}
    if len(dtypes) != 1:
        raise ValueError(f"export_megatron: shards mix token dtypes {sorted(dtypes)} (different tokenizers?)")
    out = _out_dtype(shards[0].dtype)
    docs = sum(int(s.header["documents"]) for s in shards)
    tokens = 0
    with storage.atomic_path(out_prefix + ".bin") as tmp, open(tmp, "wb") as f:
        for s in shards:
            h = xxhash.xxh3_64()
            for data in iter_bin_chunks(s.url):
                h.update(data)
                arr = np.frombuffer(data, dtype=s.dtype)
                f.write(arr.data if out == s.dtype else arr.astype(out).data)
                tokens += arr.size
            if "xxh3_64:" + h.hexdigest() != s.header["checksum"]:
                raise ShardError(f"{s.url}: checksum mismatch while exporting: corrupt shard")
    with storage.atomic_path(out_prefix + ".idx") as tmp, open(tmp, "wb") as f:
        f.write(MAGIC + struct.pack("<Q", 1) + struct.pack("<B", DTYPE_CODES[out.name]))
        f.write(struct.pack("<Q", docs) + struct.pack("<Q", docs + 1))
        ends_of = [s.document_ends().astype(np.int64) for s in shards] if docs < (1 << 24) else None
        for i, s in enumerate(shards):  # sequence lengths
            ends = ends_of[i] if ends_of else s.document_ends().astype(np.int64)
            if ends.size != int(s.header["documents"]) or (ends[-1] if ends.size else 0) != s.size:
                raise ShardError(f"{s.url}: {s.url}.idx.npy disagrees with its header (documents, tokens)")
            f.write(np.diff(ends, prepend=0).astype("<i4").tobytes())
        offset = 0
        for i, s in enumerate(shards):  # byte pointers
            ends = ends_of[i] if ends_of else s.document_ends().astype(np.int64)
            starts = np.concatenate([[0], ends[:-1]]) if ends.size else ends
            f.write((starts * out.itemsize + offset).astype("<i8").tobytes())
            offset += int(s.size) * out.itemsize
        for lo in range(0, docs + 1, _CHUNK):  # document indices 0..docs
            f.write(np.arange(lo, min(docs + 1, lo + _CHUNK), dtype="<i8").tobytes())
    return {"bin": out_prefix + ".bin", "idx": out_prefix + ".idx", "dtype": out.name, "sequences": docs,
            "documents": docs, "tokens": tokens}
