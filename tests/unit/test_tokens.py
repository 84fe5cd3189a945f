"""The token-shard format: round trip, checksum, header-last publishing, and the Megatron export."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from pretrain import storage
from pretrain.tokens import (
    FORMAT,
    ShardError,
    TokenShardWriter,
    export_megatron,
    open_shard,
    read_header,
    token_dtype,
    verify_shard,
    verify_shards,
)


def write_shard(url, docs, vocab=1000, **kw):
    w = TokenShardWriter(url, vocab, eos_id=0, tokenizer_hash="h", **kw)
    for d in docs:
        w.add(d, text_bytes=len(d) * 3)
    return w.close()


def test_roundtrip_header_and_documents(root):
    url = storage.join(root, "train", "part-00000")
    header = write_shard(url, [[*range(1, 50), 0], [*range(100, 180), 0]], source="web", split="train")
    assert {k: header[k] for k in ("format", "tokens", "documents", "bytes", "dtype", "source", "split")} == {
        "format": FORMAT, "tokens": 131, "documents": 2, "bytes": 393, "dtype": "uint16", "source": "web",
        "split": "train"}
    assert header["checksum"].startswith("xxh3_64:") and len(header["checksum"]) == len("xxh3_64:") + 16
    assert read_header(url) == header
    shard = open_shard(url, verify=True)
    assert shard.read(0, 3).tolist() == [1, 2, 3]
    assert shard.read(49, 3).tolist() == [0, 100, 101]
    assert shard.document_ends().tolist() == [50, 131]
    with pytest.raises(IndexError, match="part-00000"):
        shard.read(130, 2)


def test_batch_add_matches_per_document_add(tmp_path):
    docs = [np.r_[np.arange(1, n), 0] for n in (5, 17, 3)]
    one = write_shard(str(tmp_path / "one"), docs)
    w = TokenShardWriter(str(tmp_path / "many"), 1000, 0, "h")
    w.add_documents(np.concatenate(docs), [d.size for d in docs], text_bytes=sum(d.size * 3 for d in docs))
    many = w.close()
    assert many == one
    assert open_shard(str(tmp_path / "many")).document_ends().tolist() == [5, 22, 25]


def test_dtype_widens_for_large_vocabularies(tmp_path):
    assert token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32
    header = write_shard(str(tmp_path / "wide"), [[70000, 1, 0]], vocab=100_000)
    assert header["dtype"] == "uint32"
    assert open_shard(str(tmp_path / "wide")).read(0, 3).tolist() == [70000, 1, 0]


def test_id_outside_vocabulary_names_the_shard_and_publishes_nothing(tmp_path):
    url = str(tmp_path / "bad")
    with pytest.raises(ShardError, match=r"bad.*1000"), TokenShardWriter(url, 1000, 0, "h") as w:
        w.add([1, 2, 0], 9)
        w.add([5, 1000, 0], 9)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_flipped_byte_and_truncation_are_caught_naming_the_shard(tmp_path):
    url = str(tmp_path / "part-7")
    write_shard(url, [[*range(1, 40), 0]])
    raw = bytearray((tmp_path / "part-7.bin").read_bytes())
    raw[11] ^= 0x01
    (tmp_path / "part-7.bin").write_bytes(bytes(raw))
    open_shard(url)  # the size still matches: only the checksum can tell
    with pytest.raises(ShardError, match=r"part-7.*checksum"):
        open_shard(url, verify=True)
    (tmp_path / "part-7.bin").write_bytes(bytes(raw[:-2]))
    with pytest.raises(ShardError, match=r"part-7.*truncated"):
        open_shard(url)


def test_training_checks_each_ranks_share_of_the_shards_against_the_manifest(tmp_path):
    from pretrain.manifest import Shard

    shards = []
    for i in range(4):
        url = str(tmp_path / f"part-{i}")
        header = write_shard(url, [[*range(1, 30 + i), 0]])
        shards.append(Shard(url=url, rows=header["tokens"], bytes=header["bytes"], checksum=header["checksum"]))
    assert [verify_shards(shards, r, 2) for r in range(2)] == [2, 2]  # every shard checked once over 2 ranks
    raw = bytearray((tmp_path / "part-3.bin").read_bytes())
    raw[5] ^= 0x01
    (tmp_path / "part-3.bin").write_bytes(bytes(raw))
    assert verify_shards(shards, 0, 2) == 2  # rank 0's share is intact
    with pytest.raises(ShardError, match=r"part-3.*checksum"):
        verify_shards(shards, 1, 2)
    write_shard(str(tmp_path / "part-1"), [[5, 6, 7, 0]])  # another shard put in its place after tokenizing
    with pytest.raises(ShardError, match=r"part-1.*manifest"):
        verify_shards(shards, 1, 2)


def test_truncated_remote_shard_is_caught(s3):
    url = f"{s3}/tokens/part-3"
    write_shard(url, [[*range(1, 400), 0]])
    storage.write_bytes(url + ".bin", storage.read_bytes(url + ".bin")[:-10])
    with pytest.raises(ShardError, match=r"part-3.*truncated"):
        verify_shard(url)
    shard = open_shard(url)  # no HEAD without verify: the short read names the shard
    with pytest.raises(ShardError, match=r"part-3.*truncated"):
        shard.read(390, 10)


def test_header_is_written_last_and_a_rewrite_hides_the_old_shard(tmp_path):
    url = str(tmp_path / "p")
    write_shard(url, [[1, 2, 0]])
    w = TokenShardWriter(url, 1000, 0, "h")
    w.add([3, 4, 5, 0], 12)
    assert not (tmp_path / "p.json").exists()  # the old header is gone before new data lands
    with pytest.raises(ShardError, match="no header"):
        open_shard(url)
    w.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.bin", "p.idx.npy"]  # the temporary .bin is gone
    w = TokenShardWriter(url, 1000, 0, "h")
    w.add([3, 4, 5, 0], 12)
    assert not (tmp_path / "p.json").exists()
    w.close()
    assert open_shard(url, verify=True).read(0, 4).tolist() == [3, 4, 5, 0]


def test_foreign_header_is_refused(tmp_path):
    url = str(tmp_path / "old")
    write_shard(url, [[1, 0]])
    header = read_header(url)
    del header["format"]
    storage.write_json(url + ".json", header)
    with pytest.raises(ShardError, match=r"old.*format"):
        open_shard(url)


def read_megatron(prefix: str):
    """An independent reader of Megatron-LM's MMIDIDX index, from the format description."""
    with open(prefix + ".idx", "rb") as f:
        raw = f.read()
    assert raw[:9] == b"MMIDIDX\x00\x00"
    version, code = struct.unpack("<QB", raw[9:18])
    seqs, docs = struct.unpack("<QQ", raw[18:34])
    dtype = {8: np.uint16, 4: np.int32}[code]
    pos = 34
    lengths = np.frombuffer(raw, "<i4", seqs, pos)
    pos += 4 * seqs
    pointers = np.frombuffer(raw, "<i8", seqs, pos)
    pos += 8 * seqs
    doc_idx = np.frombuffer(raw, "<i8", docs, pos)
    pos += 8 * docs
    assert pos == len(raw) and version == 1
    data = np.fromfile(prefix + ".bin", dtype=dtype)
    isz = np.dtype(dtype).itemsize
    return [data[p // isz: p // isz + n].tolist() for p, n in zip(pointers, lengths, strict=True)], doc_idx, code


@pytest.mark.parametrize("vocab", [1000, 100_000])
def test_megatron_export_round_trip(tmp_path, vocab):
    rng = np.random.default_rng(1)
    docs = [[*rng.integers(1, vocab, int(rng.integers(1, 30))).tolist(), 0] for _ in range(25)]
    write_shard(str(tmp_path / "a"), docs[:10], vocab=vocab)
    write_shard(str(tmp_path / "b"), [], vocab=vocab)  # an empty shard adds nothing
    write_shard(str(tmp_path / "c"), docs[10:], vocab=vocab)
    info = export_megatron([str(tmp_path / n) for n in "abc"], str(tmp_path / "out" / "mg"))
    assert info["sequences"] == 25 and info["tokens"] == sum(map(len, docs))
    seqs, doc_idx, code = read_megatron(str(tmp_path / "out" / "mg"))
    assert seqs == docs
    assert doc_idx.tolist() == list(range(26))
    assert code == (8 if vocab <= 65536 else 4)


def test_megatron_export_refuses_a_corrupt_shard(tmp_path):
    write_shard(str(tmp_path / "a"), [[1, 2, 3, 0]])
    raw = bytearray((tmp_path / "a.bin").read_bytes())
    raw[0] ^= 0xFF
    (tmp_path / "a.bin").write_bytes(bytes(raw))
    with pytest.raises(ShardError, match=r"a.*checksum"):
        export_megatron([str(tmp_path / "a")], str(tmp_path / "mg"))
    assert not (tmp_path / "mg.idx").exists() and not (tmp_path / "mg.bin").exists()
