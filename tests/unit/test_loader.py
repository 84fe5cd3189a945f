"""The loader's contract: disjoint ranks, one pass per epoch, pure and resumable, mixture, S3 = local."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from pretrain import storage
from pretrain.manifest import Shard
from pretrain.tokens import (
    SequentialWindows,
    ShardError,
    ShardRef,
    TokenLoader,
    TokenShardWriter,
    mixture_epochs,
    permute,
    shard_refs,
)

L = 8


def corpus(base: str, sizes: dict[str, list[int]], seed: int = 0, vocab: int = 1 << 20) -> list[ShardRef]:
    """Shards whose token at global position i is i+1 (unique, so a window is known by its first token),
    except EOS (0) closing documents of random length."""
    rng = np.random.default_rng(seed)
    refs, pos = [], 1
    for source, shard_sizes in sizes.items():
        for n, size in enumerate(shard_sizes):
            url = storage.join(base, f"{source}-{n:03d}")
            ids = np.arange(pos, pos + size, dtype=np.int64)
            pos += size
            ends = np.unique(np.r_[np.sort(rng.choice(np.arange(1, size), size // 10, replace=False)), size]) \
                if size > 1 else np.array([size])
            ids[ends - 1] = 0
            w = TokenShardWriter(url, vocab, 0, "h", source=source, split="train")
            w.add_documents(ids, np.diff(ends, prepend=0), text_bytes=size)
            refs.append(ShardRef(url, source, w.close()["tokens"]))
    return refs


@pytest.fixture
def refs(tmp_path):
    return corpus(str(tmp_path), {"web": [200, 97, 33], "code": [150], "wiki": [81, 5]})


def all_windows(loader: TokenLoader) -> int:
    return int(sum(loader.windows_per_source().values()))


@pytest.mark.parametrize("n", [*range(1, 130), 1000, 4097])
def test_permute_is_a_bijection(n):
    for key in (0, 1, 2**63 + 5):
        assert sorted(permute(np.arange(n), n, key).tolist()) == list(range(n))


def test_permute_per_element_domains_and_keys():
    n = np.repeat([3, 10, 33], [3, 10, 33])
    x = np.concatenate([np.arange(3), np.arange(10), np.arange(33)])
    out = permute(x, n, np.repeat([7, 8, 9], [3, 10, 33])).astype(int)
    assert [sorted(out[a:b]) for a, b in ((0, 3), (3, 13), (13, 46))] == [list(range(3)), list(range(10)),
                                                                           list(range(33))]
    assert not np.array_equal(permute(np.arange(33), 33, 1), permute(np.arange(33), 33, 2))


def test_windows_are_packed_slices_of_one_shard(refs):
    loader = TokenLoader(refs, L, seed=1)
    assert loader.windows_per_source() == {"code": 18, "web": 24 + 12 + 4, "wiki": 10}
    assert loader.skipped_shards == [refs[-1].url]  # 5 tokens < seq_len + 1: counted, not silently dropped
    b = loader.batch(3, 0, 1, 16).tokens
    assert b.shape == (16, L + 1) and b.dtype == np.int64
    shard, start = loader.locate(loader.samples_of(3, 0, 1, 16))
    for row, s, t in zip(b, shard, start, strict=True):
        mapped = np.memmap(loader.shards[s].url + ".bin", dtype=np.uint32, mode="r")
        assert np.array_equal(row, mapped[t:t + L + 1]) and t % L == 0


@pytest.mark.parametrize("world", [1, 2, 4])
def test_ranks_are_disjoint_and_an_epoch_visits_every_window_once(refs, world):
    loader = TokenLoader(refs, L, seed=7)
    batch = 3
    seen, steps = [], -(-loader.epoch_size // (batch * world))
    for step in range(steps):
        rows = [loader.batch(step, r, world, batch) for r in range(world)]
        ids = [set(loader.window_index(b.samples).tolist()) for b in rows]
        assert sum(map(len, ids)) == len(set().union(*ids)) == batch * world or step == steps - 1
        assert len({b.tokens.tobytes() for b in rows}) == world
        seen.extend(s for b in rows for s in b.samples.tolist())
    idx = loader.window_index(np.array([s for s in seen if s < loader.epoch_size]))
    assert sorted(idx.tolist()) == list(range(all_windows(loader)))
    assert loader.epoch_size == all_windows(loader)


def test_batches_are_a_pure_function_and_resume_exactly(refs):
    a = TokenLoader(refs, L, seed=5)
    run = [a.batch(s, 1, 2, 4).tokens for s in range(30)]
    b = TokenLoader(list(reversed(refs)), L, seed=5)  # a new object, shards listed in another order
    assert all(np.array_equal(b.batch(s, 1, 2, 4).tokens, run[s]) for s in (17, 29, 0))
    assert not np.array_equal(TokenLoader(refs, L, seed=6).batch(17, 1, 2, 4).tokens, run[17])
    # The next epoch is another order of the same windows.
    n = a.epoch_size
    first, second = a.window_index(np.arange(n)), a.window_index(np.arange(n, 2 * n))
    assert sorted(first.tolist()) == sorted(second.tolist()) and not np.array_equal(first, second)


def test_world_size_change_with_anchor_continues_the_stream(refs):
    loader = TokenLoader(refs, L, seed=3)
    batch, seen = 2, []
    for step in range(5):  # world 2, steps 0..4
        seen += [x for r in range(2) for x in loader.batch(step, r, 2, batch).samples.tolist()]
    anchor = (5, loader.samples_before(5, 2, batch))
    step = 5
    while loader.samples_before(step, 4, batch, anchor) < loader.epoch_size:  # world 4 from step 5
        seen += [x for r in range(4) for x in loader.batch(step, r, 4, batch, anchor=anchor).samples.tolist()]
        step += 1
    idx = loader.window_index(np.array([s for s in seen if s < loader.epoch_size]))
    assert sorted(idx.tolist()) == list(range(all_windows(loader)))  # every window, none twice
    with pytest.raises(ValueError, match="before the anchor"):
        loader.batch(0, 0, 4, batch, anchor=(5, 3))


def test_up_and_down_sampling_follow_the_planned_epochs(refs):
    loader = TokenLoader(refs, L, seed=2, epochs={"web": 2.5, "code": 0.5})
    avail, planned = loader.windows_per_source(), loader.planned_per_source()
    assert planned == {"web": 100, "code": 9, "wiki": 10}
    counts = collections.Counter(loader.window_index(np.arange(loader.epoch_size)).tolist())
    base = {s: sum(list(avail.values())[:i]) for i, s in enumerate(loader.sources)}
    web = [counts[base["web"] + w] for w in range(avail["web"])]
    assert sorted(set(web)) == [2, 3] and sum(web) == 100  # every window twice, a random half a third time
    code = [counts[base["code"] + w] for w in range(avail["code"])]
    assert sorted(set(code)) == [0, 1] and sum(code) == 9  # a subset, none twice
    assert loader.sources_of(0, loader.epoch_size) == planned
    assert loader.sources_of(loader.epoch_size * 3, loader.epoch_size * 2) == {k: 2 * v for k, v in planned.items()}
    starts = np.array(list(base.values()))
    for first, count in ((37, 55), (10, 100), (100, 150)):  # short, most of an epoch, across an epoch boundary
        src = np.searchsorted(starts, loader.window_index(np.arange(first, first + count)), side="right") - 1
        assert loader.sources_of(first, count) == {s: int((src == i).sum()) for i, s in enumerate(loader.sources)}
    with pytest.raises(ValueError, match="nosuch"):
        TokenLoader(refs, L, seed=2, epochs={"nosuch": 1.0})


def test_open_shards_are_bounded(refs):
    loader = TokenLoader(refs, L, seed=8)
    expected = [loader.batch(s, 0, 1, 8).tokens for s in range(6)]
    bounded = TokenLoader(refs, L, seed=8)
    bounded._io.max_open = 1  # memory maps hold file descriptors: many shards must not exhaust them
    assert all(np.array_equal(bounded.batch(s, 0, 1, 8).tokens, expected[s]) for s in range(6))
    assert len(bounded._io._open) == 1


def test_document_ids_restart_after_each_eos(refs):
    loader = TokenLoader(refs, L, seed=4, document_masking=True)
    b = loader.batch(2, 0, 1, 32)
    assert b.document_ids is not None and b.document_ids.shape == b.tokens.shape
    for row, ids in zip(b.tokens, b.document_ids, strict=True):
        expected, doc = [], 0
        for t in row.tolist():
            expected.append(doc)
            doc += t == 0
        assert ids.tolist() == expected
    assert any(ids[-1] > 0 for ids in b.document_ids)
    assert TokenLoader(refs, L, seed=4).batch(2, 0, 1, 32).document_ids is None


def test_short_shards_are_counted_and_all_short_is_an_error(tmp_path):
    refs = corpus(str(tmp_path), {"a": [5, 9, 30]})
    loader = TokenLoader(refs, L, seed=0)
    assert loader.skipped_shards == [refs[0].url] and loader.windows_per_source() == {"a": 1 + 3}
    with pytest.raises(ValueError, match="shorter than seq_len"):
        TokenLoader(refs[:1], L, seed=0)
    with pytest.raises(ShardError, match=r"a-001.*manifest"):
        TokenLoader([refs[0], ShardRef(refs[1].url, "a", 99)], L, seed=0).batch(0, 0, 1, 1)


def test_manifest_helpers():
    shards = [Shard("u1", 10, 5, meta={"split": "train", "source": "web"}), Shard("u2", 7, 5, meta={"split": "val"})]
    assert shard_refs(shards, "train") == [ShardRef("u1", "web", 10)]
    assert shard_refs(shards, "val") == [ShardRef("u2", "", 7)]
    assert mixture_epochs({"mixture": {"web": {"weight": 1.0, "epochs": 1.5}}}) == {"web": 1.5}
    assert mixture_epochs({}) is None


def test_sequential_windows_are_fixed_and_non_overlapping(refs):
    seq = SequentialWindows([r.url for r in refs], L)
    batches = list(seq.batches(7, max_batches=3))
    assert [b.shape for b in batches] == [(7, L + 1)] * 3
    rows = np.concatenate(batches)
    assert np.array_equal(rows[0], np.arange(1, L + 2) * (rows[0] != 0))  # the first shard's first window
    assert all(rows[i + 1, 0] == rows[i, -1] for i in range(5))  # each target predicted once
    assert sum(len(b) for b in seq.batches(7)) == seq.windows == 24 + 12 + 4 + 18 + 10
    assert seq.skipped_shards == [refs[-1].url] and seq.bytes == seq.tokens


def test_s3_shards_give_the_same_batches_as_local_copies(tmp_path, s3):
    sizes = {"web": [3000, 1200], "code": [2000]}
    local, remote = corpus(str(tmp_path), sizes), corpus(f"{s3}/tokens", sizes)
    a = TokenLoader(local, 32, seed=9, epochs={"code": 2.0})
    b = TokenLoader(remote, 32, seed=9, epochs={"code": 2.0}, block_bytes=4096, cache_bytes=16 << 10)
    for step in range(12):
        assert np.array_equal(a.batch(step, 1, 2, 8).tokens, b.batch(step, 1, 2, 8).tokens)
    assert np.array_equal(a.batch(500, 0, 2, 8).tokens, b.batch(500, 0, 2, 8).tokens)  # a resume far ahead
    stats = b.io_stats
    assert stats["hits"] > 0 and stats["cached_bytes"] <= 16 << 10  # prefetched blocks, bounded memory
    assert stats["fetched_bytes"] > 16 << 10  # more than the budget went through: eviction happened
    b.close()
    with TokenLoader(remote, 32, seed=9, block_bytes=4096, prefetch_steps=0) as c:
        assert np.array_equal(c.batch(3, 0, 1, 1).tokens, TokenLoader(local, 32, seed=9).batch(3, 0, 1, 1).tokens)
        assert c.io_stats["fetched_bytes"] <= 2 * 4096  # a window's blocks, not its 8-12 KB shard
    seq_a = list(SequentialWindows([r.url for r in local], 32).batches(16))
    seq_b = SequentialWindows([r.url for r in remote], 32, block_bytes=8192)
    assert all(np.array_equal(x, y) for x, y in zip(seq_a, seq_b.batches(16), strict=True))
    seq_b.close()


def test_the_training_loop_resumes_the_sample_stream_on_another_world_size():
    from pretrain.train.loop import loader_anchor

    assert loader_anchor(None, 0, 2, 4) == (0, 0)
    saved = {"world": 2, "micro_batch": 4, "anchor": [0, 0]}
    assert loader_anchor(saved, 10, 2, 4) == (0, 0)  # the same world: the pure function of the step
    anchor = loader_anchor(saved, 10, 4, 4)  # twice the ranks from micro-step 10: the stream continues at 80
    assert anchor == (10, 80)
    def samples(step: int, rank: int, world: int, at: tuple[int, int] = (0, 0)) -> range:
        first = TokenLoader.samples_before(step, world, 4, at) + rank * 4
        return range(first, first + 4)
    before = {g for s in range(10) for r in range(2) for g in samples(s, r, 2)}
    after = {g for s in range(10, 20) for r in range(4) for g in samples(s, r, 4, anchor)}
    assert before | after == set(range(80 + 160)) and not before & after
    again = loader_anchor({"world": 4, "micro_batch": 4, "anchor": [10, 80]}, 20, 4, 4)
    assert again == (10, 80)  # saved after the change: kept as it is
