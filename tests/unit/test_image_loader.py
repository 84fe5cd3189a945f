"""The image loader: a pure function of (seed, step, rank, world), every sample once per epoch, epochs reshuffled,
images decoded to squares, captions padded, bad images skipped and counted."""

from __future__ import annotations

import io

import numpy as np
import pytest
from image_set import render, write_image_run, write_shard
from PIL import Image

from pretrain.manifest import Manifest
from pretrain.tokens.images import ImageLoader, SampleShardRef, decode_square, image_data, sample_refs


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("images") / "run"
    recipe, _ = write_image_run(str(root), [], train=320, val=70, row_group=32)
    return recipe, Manifest.load(recipe.url("tokens"))


def test_batches_are_a_pure_function_of_the_step_and_cover_each_epoch_once(run):
    recipe, manifest = run
    loader, _ = image_data(manifest, recipe.seed, recipe.model.seq_len)
    again, _ = image_data(manifest, recipe.seed, recipe.model.seq_len)
    assert loader.epoch_size == 320
    a, b = loader.batch(3, 1, 2, 16), again.batch(3, 1, 2, 16)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.captions, b.captions)
    assert a.images.shape == (16, 32, 32, 3) and a.images.dtype == np.uint8
    for epoch in (0, 1):  # 10 steps x 2 ranks x 16 = one epoch
        seen = [loader.locate(loader.samples_of(epoch * 10 + s, r, 2, 16)) for s in range(10) for r in range(2)]
        pairs = {(g, row) for groups, rows in seen for g, row in zip(groups.tolist(), rows.tolist(), strict=True)}
        assert len(pairs) == 320  # every sample exactly once
    first = np.concatenate([loader.locate(loader.samples_of(s, 0, 1, 32))[0] for s in range(10)])
    second = np.concatenate([loader.locate(loader.samples_of(s, 0, 1, 32))[0] for s in range(10, 20)])
    assert not np.array_equal(first, second)  # another order in the next epoch
    other_seed = ImageLoader(sample_refs(manifest.shards, "train"), seed=1, image_size=32)
    assert not np.array_equal(other_seed.locate(np.arange(32))[0], loader.locate(np.arange(32))[0])


def test_a_batch_reads_few_row_groups_and_the_order_is_shuffled_within_them(run):
    recipe, manifest = run
    loader = ImageLoader(sample_refs(manifest.shards, "train"), recipe.seed, 32, window=2, cache=3)
    groups, rows = loader.locate(np.arange(64))  # the first window: 2 row groups of 32
    assert len(set(groups.tolist())) == 2
    assert not np.array_equal(rows[:32], np.arange(32))  # not in file order
    loader.batch(0, 0, 1, 64)
    assert len(loader._groups._cached) <= 3


def test_resuming_on_another_world_size_continues_the_stream(run):
    recipe, manifest = run
    loader, _ = image_data(manifest, recipe.seed, recipe.model.seq_len)
    consumed = loader.samples_before(5, 2, 8)  # 5 steps of 2 ranks x 8
    assert consumed == 80
    after = loader.samples_of(5, 0, 1, 16, anchor=(5, consumed))
    assert after.tolist() == list(range(80, 96))
    counts = loader.sources_of(0, 700)
    assert counts == {"shapes": 700}


def test_images_decode_to_squares_and_captions_are_padded(run, tmp_path):
    recipe, manifest = run
    loader, val = image_data(manifest, recipe.seed, recipe.model.seq_len)
    batch = loader.batch(0, 0, 1, 8)
    assert batch.captions.shape == (8, 8) and batch.attention_mask.shape == (8, 8)
    eos, pad = manifest.extra["eos_id"], manifest.extra["pad_id"]
    for ids, mask in zip(batch.captions.tolist(), batch.attention_mask.tolist(), strict=True):
        n = sum(mask)
        assert mask == [1] * n + [0] * (8 - n) and ids[n - 1] == eos and ids[n:] == [pad] * (8 - n)
        assert eos not in ids[:n - 1]
    assert set(batch.labels.tolist()) <= {0, 1, 2, 3}
    images, captions, mask = batch.inputs()
    assert images.shape == (8, 32, 32, 3) and not captions.dtype.is_floating_point and mask.sum() > 0
    wide = Image.new("RGB", (48, 32), (0, 0, 0))
    wide.paste((255, 255, 255), (16, 0, 32, 32))  # a white middle third
    buf = io.BytesIO()
    wide.save(buf, format="PNG")
    square = decode_square(buf.getvalue(), 16)
    assert square.shape == (16, 16, 3) and square[:, 4:12].min() > 200 and square[:, 0].max() < 60
    rows = list(val.batches(32))
    assert [len(b.samples) for b in rows] == [32, 32, 6]  # file order, the last batch short, the same each time
    assert np.array_equal(next(val.batches(32)).images, rows[0].images)
    assert [len(b.samples) for b in val.batches(32, max_batches=2)] == [32, 32]


def test_an_undecodable_image_is_replaced_and_counted(tmp_path):
    rng = np.random.default_rng(0)
    good = [render("circle", "red", rng) for _ in range(3)]
    rows = [{"id": str(i), "source": "s", "image": img, "text": "", "caption": [], "label": -1}
            for i, img in enumerate([good[0], b"\x89PNG truncated", good[1], good[2]])]
    shard = write_shard(str(tmp_path / "part.parquet"), rows, 4)
    loader = ImageLoader([SampleShardRef(shard.url, "s", 4)], seed=0, image_size=32)
    groups, rows_ = np.zeros(4, dtype=np.int64), np.arange(4)
    batch = loader.rows(groups, rows_, np.arange(4))
    assert loader.skipped == {"undecodable_image": 1}
    assert np.array_equal(batch.images[1], batch.images[2])  # the next sample stands in
    assert batch.captions is None and batch.labels.tolist() == [-1] * 4


def test_a_text_manifest_is_refused_and_the_row_count_is_checked(tmp_path, run):
    _, manifest = run
    with pytest.raises(ValueError, match="samples manifest"):
        image_data(Manifest(kind="tokens", root=str(tmp_path), fingerprint="x"), 0, 8)
    url = manifest.shards[0].url
    with pytest.raises(ValueError, match="manifest says"):
        ImageLoader([SampleShardRef(url, "shapes", 999)], seed=0, image_size=32)
