"""Held-out metrics per source: checked against transformers' own loss and against hand counts."""

from __future__ import annotations

import math
import types

import numpy as np
import pytest
import torch

from pretrain.config import ModelConfig
from pretrain.evaluate.heldout import heldout_by_source, val_shards_by_source
from pretrain.manifest import Manifest, Shard
from pretrain.model.build import build_model
from pretrain.tokens import TokenShardWriter

VOCAB = 64
SEQ = 8


def shard(root, name: str, source: str, split: str, docs: list[tuple[list[int], int]], vocab: int = VOCAB,
          meta_source: bool = True) -> Shard:
    """One token shard of (ids, UTF-8 bytes) documents; an EOS (id 0) ends each document."""
    url = str(root / split / name)
    with TokenShardWriter(url, vocab, 0, "test", source=source, split=split) as writer:
        for ids, nbytes in docs:
            writer.add(np.asarray([*ids, 0], dtype=np.uint32), nbytes)
        header = writer.close()
    meta = {"split": split, "documents": header["documents"], **({"source": source} if meta_source else {})}
    return Shard(url=url, rows=header["tokens"], bytes=header["bytes"], checksum=header["checksum"], meta=meta)


def manifest(root, shards: list[Shard]) -> Manifest:
    return Manifest(kind="tokens", root=str(root), fingerprint="t", shards=shards,
                    extra={"vocab_size": VOCAB, "eos_id": 0})


def random_docs(seed: int, n: int, low: int = 3) -> list[tuple[list[int], int]]:
    rng = np.random.default_rng(seed)
    return [(rng.integers(low, VOCAB, size=int(rng.integers(5, 30))).tolist(), int(rng.integers(10, 90)))
            for _ in range(n)]


@pytest.fixture(scope="module")
def llama():
    torch.manual_seed(0)
    cfg = ModelConfig(architecture="llama", hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                      seq_len=SEQ, qk_norm=False)
    return build_model(cfg, VOCAB, 0, 1, seed=0).eval()


def hf_windows(url: str, dtype: str = "uint16") -> list[np.ndarray]:
    """Non-overlapping windows of seq_len+1 tokens of a shard, cut here from the raw .bin (not by the loader)."""
    ids = np.fromfile(url + ".bin", dtype=dtype).astype(np.int64)
    return [ids[k * SEQ: k * SEQ + SEQ + 1] for k in range((len(ids) - 1) // SEQ)]


def test_perplexity_is_exp_of_transformers_own_loss_per_source_and_overall(tmp_path, llama, one_thread):
    shards = [shard(tmp_path, "a0", "web", "val", random_docs(1, 6)),
              shard(tmp_path, "a1", "web", "val", random_docs(2, 4)),
              shard(tmp_path, "b0", "code", "val", random_docs(3, 5)),
              shard(tmp_path, "t0", "web", "train", random_docs(4, 9))]  # train shards are never scored
    result = heldout_by_source(llama, manifest(tmp_path, shards), SEQ, batch=3, max_batches=100)
    assert set(result["by_source"]) == {"web", "code"}
    losses: dict[str, list[float]] = {"web": [], "code": []}
    with torch.no_grad():
        for s in shards[:3]:
            for w in hf_windows(s.url):
                x = torch.from_numpy(w)[None]
                losses[s.meta["source"]].append(llama(input_ids=x, labels=x).loss.item())  # HF shifts itself
    for source, values in losses.items():
        row = result["by_source"][source]
        assert row["tokens"] == len(values) * SEQ
        assert row["loss"] == pytest.approx(np.mean(values), rel=1e-5)
        assert row["perplexity"] == pytest.approx(math.exp(np.mean(values)), rel=1e-5)
        assert row["perplexity"] == pytest.approx(math.exp(row["loss"]), rel=1e-12)
    every = losses["web"] + losses["code"]  # every window scores SEQ targets: the overall mean is the plain mean
    assert result["overall"]["tokens"] == len(every) * SEQ
    assert result["overall"]["perplexity"] == pytest.approx(math.exp(np.mean(every)), rel=1e-5)
    assert 2 < result["overall"]["perplexity"] < 4 * VOCAB  # a random model: near the vocabulary size


def test_max_batches_caps_each_source_on_its_own(tmp_path, llama, one_thread):
    shards = [shard(tmp_path, "a0", "web", "val", random_docs(1, 20)),
              shard(tmp_path, "b0", "code", "val", random_docs(3, 20))]
    result = heldout_by_source(llama, manifest(tmp_path, shards), SEQ, batch=2, max_batches=3)
    assert result["by_source"]["web"]["tokens"] == result["by_source"]["code"]["tokens"] == 2 * 3 * SEQ
    assert result["overall"]["tokens"] == 2 * 2 * 3 * SEQ


class Uniform(torch.nn.Module):
    """Equal logits for every token: exactly ln(V) nats, log2(V) bits, per token."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def forward(self, input_ids):
        return types.SimpleNamespace(logits=torch.zeros(*input_ids.shape, self.vocab) + self.anchor)


def test_bits_per_byte_matches_a_hand_count(tmp_path):
    # vocabulary 16: 4 bits per token. "a": 32 ids + EOS = 33 tokens for 66 bytes (2 bytes a token, e.g. "é");
    # "b": 33 tokens for 132 bytes (4 a token). Windows of 9 tokens: (33-1)//8 = 4 each, 32 scored tokens.
    ids = list(range(1, 16)) * 3
    shards = [shard(tmp_path, "a", "a", "val", [(ids[:32], 66)], vocab=16),
              shard(tmp_path, "b", "b", "val", [(ids[:32], 132)], vocab=16)]
    result = heldout_by_source(Uniform(16), manifest(tmp_path, shards), SEQ, batch=4, max_batches=10)
    a, b, overall = result["by_source"]["a"], result["by_source"]["b"], result["overall"]
    assert a["loss"] == pytest.approx(math.log(16)) and a["perplexity"] == pytest.approx(16.0)
    assert a["tokens"] == b["tokens"] == 32
    assert a["bits_per_byte"] == pytest.approx(4 * 33 / 66)  # 2.0
    assert b["bits_per_byte"] == pytest.approx(4 * 33 / 132)  # 1.0
    # overall: 64 tokens x 4 bits over (32 x 66/33 + 32 x 132/33) = 192 bytes
    assert overall["bits_per_byte"] == pytest.approx(256 / 192)
    assert overall["tokens"] == 64 and overall["perplexity"] == pytest.approx(16.0)


def test_a_source_without_a_full_window_is_reported_and_none_at_all_is_an_error(tmp_path, llama, one_thread):
    short = shard(tmp_path, "s0", "tiny", "val", [([5, 6, 7], 9)])  # 4 tokens < SEQ + 1
    long = shard(tmp_path, "l0", "web", "val", random_docs(5, 6))
    result = heldout_by_source(llama, manifest(tmp_path, [short, long]), SEQ, batch=4, max_batches=10)
    assert result["by_source"]["tiny"]["tokens"] == 0 and result["by_source"]["tiny"]["loss"] is None
    assert "s0" in result["by_source"]["tiny"]["skipped"]
    assert result["overall"]["tokens"] == result["by_source"]["web"]["tokens"] > 0
    with pytest.raises(ValueError, match=r"s0"):
        heldout_by_source(llama, manifest(tmp_path, [short]), SEQ, batch=4, max_batches=10)


def test_older_manifests_name_the_source_in_the_shard_header_only(tmp_path):
    shards = [shard(tmp_path, "a", "web", "val", [([1, 2, 3], 3)], meta_source=False),
              shard(tmp_path, "t", "web", "train", [([1, 2, 3], 3)], meta_source=False)]
    found = val_shards_by_source(manifest(tmp_path, shards))
    assert list(found) == ["web"] and [r.url for r in found["web"]] == [shards[0].url]


def test_masked_lm_rows_are_token_weighted_and_repeatable(tmp_path, one_thread):
    cfg = ModelConfig(architecture="modernbert", hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                      seq_len=SEQ)
    model = build_model(cfg, VOCAB, 0, 1, seed=0, mask_id=2).eval()
    shards = [shard(tmp_path, "a0", "web", "val", random_docs(1, 12)),
              shard(tmp_path, "b0", "code", "val", random_docs(3, 6))]
    kwargs = {"probability": 0.3, "special_ids": {"eos": 0, "pad": 1, "mask": 2}, "vocab_size": VOCAB, "seed": 7}
    first = heldout_by_source(model, manifest(tmp_path, shards), SEQ, 4, 10, "masked_lm", **kwargs)
    again = heldout_by_source(model, manifest(tmp_path, shards), SEQ, 4, 10, "masked_lm", **kwargs)
    assert first == again  # fixed masks: the same numbers every time
    rows = first["by_source"]
    assert all(r["bits_per_byte"] is None and 0 <= r["masked_accuracy"] <= 1 for r in rows.values())
    count = sum(r["tokens"] for r in rows.values())
    assert first["overall"]["tokens"] == count > 0
    assert first["overall"]["loss"] == pytest.approx(sum(r["loss"] * r["tokens"] for r in rows.values()) / count)
    assert first["overall"]["masked_accuracy"] == pytest.approx(
        sum(r["masked_accuracy"] * r["tokens"] for r in rows.values()) / count)
    with pytest.raises(ValueError, match="special_ids"):
        heldout_by_source(model, manifest(tmp_path, shards), SEQ, 4, 10, "masked_lm")
