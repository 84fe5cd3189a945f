from __future__ import annotations

import numpy as np
import pytest

from pretrain import storage
from pretrain.tokens import TokenDataset, TokenShardWriter, open_shard, token_dtype


def write_shard(url, docs, vocab=1000):
    w = TokenShardWriter(url, vocab, eos_id=0, tokenizer_hash="h")
    for d in docs:
        w.add(d, text_bytes=len(d) * 3)
    return w.close()


def test_roundtrip_and_header_last(root):
    url = storage.join(root, "train", "part-00000")
    header = write_shard(url, [list(range(1, 50)), list(range(100, 180))])
    assert header["tokens"] == 129 and header["documents"] == 2 and header["dtype"] == "uint16"
    shard = open_shard(url)
    assert shard.tokens[:3].tolist() == [1, 2, 3]
    ends = np.load(storage.local_copy(url + ".idx.npy"))
    assert ends.tolist() == [49, 129]


def test_dtype_widens_for_large_vocabularies():
    assert token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32


def test_header_disagreeing_with_data_is_an_error(tmp_path):
    url = str(tmp_path / "s")
    write_shard(url, [list(range(40))])
    with open(url + ".bin", "ab") as f:
        f.write(b"\x00\x00")  # a torn write
    with pytest.raises(ValueError, match="header says"):
        open_shard(url)


def test_sampling_is_a_pure_function_of_seed_step_rank(tmp_path):
    urls = []
    for i in range(3):
        urls.append(str(tmp_path / f"p{i}"))
        write_shard(urls[-1], [list(np.arange(200) + 1000 * i)])
    ds = TokenDataset(urls, seq_len=16)
    a = ds.sample(seed=1, step=5, rank=0, batch=4)
    assert a.shape == (4, 17)
    assert np.array_equal(a, TokenDataset(urls, seq_len=16).sample(seed=1, step=5, rank=0, batch=4))
    assert not np.array_equal(a, ds.sample(seed=1, step=5, rank=1, batch=4))
    assert not np.array_equal(a, ds.sample(seed=1, step=6, rank=0, batch=4))
    assert all(np.all(np.diff(row) == 1) for row in a)  # windows never cross shard boundaries


def test_sequential_windows_are_fixed(tmp_path):
    url = str(tmp_path / "v")
    write_shard(url, [list(range(100))])
    batches = list(TokenDataset([url], seq_len=10).sequential(batch=3, max_batches=2))
    assert [b.shape for b in batches] == [(3, 11), (3, 11)]
    assert batches[0][1][0] == 10


def test_too_small_shards_are_an_error(tmp_path):
    url = str(tmp_path / "tiny")
    write_shard(url, [[1, 2, 3]])
    with pytest.raises(ValueError, match="seq_len"):
        TokenDataset([url], seq_len=16)
