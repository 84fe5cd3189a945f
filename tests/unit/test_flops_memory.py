"""FLOPs per token, peak FLOP/s, MFU and the per-rank memory estimate: the numbers users trust."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import (
    BertConfig,
    BertForMaskedLM,
    LlamaConfig,
    LlamaForCausalLM,
    ModernBertConfig,
    ModernBertForMaskedLM,
)

from pretrain.config import ModelConfig, TrainConfig
from pretrain.model import flops, memory
from pretrain.model.build import llama_config
from pretrain.model.flops import flops_breakdown, flops_per_token, lookup_peak, matmul_precision, mfu, peak_flops
from pretrain.model.memory import (
    DoesNotFit,
    available_memory,
    check_fits,
    device_memory_bytes,
    estimate_memory,
    parameter_counts,
)
from pretrain.model.parallel import transformer_blocks

GIB = 1 << 30


def small_llama(**kw) -> LlamaConfig:
    shape = {"vocab_size": 1000, "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": True}
    return LlamaConfig(**{**shape, **kw})


def modernbert(**kw) -> ModernBertConfig:
    ids = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "cls_token_id": 1, "sep_token_id": 2}
    shape = {"vocab_size": 1000, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 3,
             "num_attention_heads": 4, "local_attention": 16}
    return ModernBertConfig(**{**ids, **shape, **kw})


def test_llama_flops_match_a_hand_count():
    # hidden 64, 4 heads of 16, 2 kv heads (k/v width 32), intermediate 160, vocab 1000, 2 layers, T = 32.
    # Forward FLOPs per token, 2 * in * out per matrix:
    q = 2 * 64 * 64  # 8,192
    k = v = 2 * 64 * 32  # 4,096 each (GQA: 2 kv heads x 16)
    o = 2 * 64 * 64  # 8,192
    gate = up = down = 2 * 64 * 160  # 20,480 each
    attention = 2 * 2 * 32 * 64  # Q K^T + P V over all 32 keys (no causal discount): 8,192
    layer = q + k + v + o + gate + up + down + attention  # 94,208
    head = 2 * 64 * 1000  # 128,000 (tied to the embedding, still a matmul)
    assert 3 * (2 * layer + head) == 949_248
    assert flops_per_token(small_llama(), 32) == 949_248
    parts = flops_breakdown(small_llama(), 32)
    assert parts["k_proj"] == 3 * 2 * k and parts["lm_head"] == 3 * head and parts["head_transform"] == 0
    assert parts["attention"] == 3 * 2 * attention and sum(parts.values()) == 949_248


def test_tied_and_untied_heads_cost_the_same():
    assert flops_per_token(small_llama(tie_word_embeddings=True), 64) == flops_per_token(
        small_llama(tie_word_embeddings=False), 64)


def test_gqa_shrinks_only_the_kv_projections():
    mha, gqa = flops_breakdown(small_llama(num_key_value_heads=4), 32), flops_breakdown(small_llama(), 32)
    assert gqa["k_proj"] == mha["k_proj"] / 2 and gqa["v_proj"] == mha["v_proj"] / 2
    assert all(gqa[key] == mha[key] for key in mha if key not in ("k_proj", "v_proj"))


def test_sliding_window_layers_count_their_window():
    from transformers import MistralConfig

    config = MistralConfig(vocab_size=1000, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, sliding_window=16)
    assert flops_breakdown(config, 64)["attention"] == 3 * 2 * 2 * 2 * 16 * 64  # 2 layers, 16 keys, not 64
    assert flops_breakdown(small_llama(), 64)["attention"] == 3 * 2 * 2 * 2 * 64 * 64


def test_matches_6n_plus_12lht_when_heads_equal_kv_heads():
    config = small_llama(num_key_value_heads=4, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    matmul_params = sum(p.numel() for p in model.parameters() if p.ndim == 2)  # blocks + the (tied) embedding
    n = matmul_params - 1000 * 64 + 1000 * 64  # less the embedding lookup, plus the head that reuses it
    seq_len = 128
    assert flops_per_token(config, seq_len) == 6 * n + 12 * 2 * 64 * seq_len
    everything = sum(p.numel() for p in model.parameters())  # norms too (not matmuls): a tiny share
    assert flops_per_token(config, seq_len) == pytest.approx(6 * everything + 12 * 2 * 64 * seq_len, rel=5e-3)


def test_masked_lm_head_runs_on_the_masked_share_and_sliding_layers_see_their_window():
    config = modernbert()  # layers: global, sliding, sliding; sliding window +-8 -> 17 keys
    parts = flops_breakdown(config, 128, "masked_lm", 0.15)
    assert parts["lm_head"] == pytest.approx(3 * 0.15 * 2 * 64 * 1000)
    assert parts["head_transform"] == pytest.approx(3 * 0.15 * 2 * 64 * 64)
    assert parts["mlp"] == 3 * 3 * 3 * 2 * 64 * 96  # GLU: Wi is 2 x intermediate wide, then Wo
    assert parts["attention"] == 3 * 2 * 2 * (128 + 17 + 17) * 64
    dense = flops_breakdown(config, 128, "masked_lm", 0.15, gathered_head=False)
    assert dense["lm_head"] == 3 * 2 * 64 * 1000
    bert = flops_breakdown(BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=256), 64, "masked_lm", 0.15)
    assert bert["mlp"] == 3 * 2 * 2 * 2 * 64 * 256  # up and down only


def test_mfu_is_per_device_on_both_sides():
    global_tokens_per_second, world = 20_000.0, 2
    value = mfu(global_tokens_per_second / world, 1e9, 1e14)
    assert value == pytest.approx(0.1)  # not 0.2 (world x tokens over one device's peak)
    with pytest.raises(ValueError):
        mfu(1.0, 1.0, 0.0)


@pytest.mark.parametrize("name,precision,expected,row", [
    ("NVIDIA H100 80GB HBM3", "bf16", 989e12, "H100 SXM"),
    ("NVIDIA H100 80GB HBM3", "tf32", 494.7e12, "H100 SXM"),
    ("NVIDIA H100 PCIe", "bf16", 756e12, "H100 PCIe"),
    ("NVIDIA H100 NVL", "bf16", 835e12, "H100 NVL"),
    ("NVIDIA H200", "bf16", 989e12, "H200"),
    ("NVIDIA A100-SXM4-80GB", "bf16", 312e12, "A100"),
    ("NVIDIA A100-SXM4-80GB", "tf32", 156e12, "A100"),
    ("NVIDIA B200", "bf16", 2250e12, "B200"),
    ("NVIDIA GB200", "bf16", 2500e12, "GB200"),
    ("NVIDIA L40S", "bf16", 362e12, "L40S"),
    ("NVIDIA L4", "bf16", 121e12, "L4"),
])
def test_peak_table_by_device_name(name, precision, expected, row):
    value, source = lookup_peak(name, precision)
    assert value == expected and source == f"table:{row} {precision}"


def test_unknown_devices_and_precision_mapping(monkeypatch):
    assert lookup_peak("NVIDIA A10G", "bf16")[0] is None  # not the A10's row
    assert matmul_precision("fp32", tf32=True) == "tf32"
    assert matmul_precision("fp32", tf32=True, device_type="cpu") == "fp32"
    assert matmul_precision("bf16", tf32=True) == "bf16"
    monkeypatch.setenv("PRETRAIN_PEAK_FLOPS", "1.5e14")
    assert peak_flops(torch.device("cpu"), "bf16") == (1.5e14, "env")


def test_cpu_probe_is_positive_finite_and_cached(monkeypatch):
    monkeypatch.delenv("PRETRAIN_PEAK_FLOPS", raising=False)
    threads = torch.get_num_threads()
    value, source = peak_flops(torch.device("cpu"), "bf16", threads=1, probe_size=256)
    assert math.isfinite(value) and value > 0 and source == "probe:cpu-bf16 256x256 1 threads"
    assert torch.get_num_threads() == threads  # restored
    monkeypatch.setattr(torch, "mm", lambda *a, **k: pytest.fail("measured twice"))
    assert flops.matmul_probe(torch.bfloat16, 256, 1) == value
    assert peak_flops(torch.device("cpu"), "bf16", threads=1, probe_size=256)[0] == value


def train(**kw) -> TrainConfig:
    return TrainConfig(**kw)


def test_8b_does_not_fit_one_80gb_device_under_ddp_and_says_what_to_change():
    config = llama_config(ModelConfig(preset="8b", seq_len=2048), 128256, 0)
    estimate = estimate_memory(config, train(parallel="ddp"), 1, 8, 2048)
    with pytest.raises(DoesNotFit) as err:
        check_fits(estimate, int(80e9), "train.memory_gb = 80")
    message = str(err.value)
    for needle in ("train.memory_gb = 80", "train.activation_checkpointing: full", "train.micro_batch_size",
                   "train.precision: bf16", "fsdp over >= ", "parameters", "optimizer"):
        assert needle in message, needle
    sharded = estimate_memory(config, train(parallel="fsdp", precision="bf16", activation_checkpointing="full"),
                              8, 1, 2048)
    check_fits(sharded, int(80e9), "train.memory_gb = 80")


def test_125m_with_micro_batch_8_x_2048_fits_80gb():
    config = llama_config(ModelConfig(preset="125m", seq_len=2048), 50304, 0)
    for cfg in (train(), train(precision="bf16"), train(loss="plain")):
        estimate = estimate_memory(config, cfg, 1, 8, 2048)
        check_fits(estimate, int(80e9), "detected")
        assert 4 * GIB < estimate.total < 40 * GIB, estimate.describe()


@pytest.mark.parametrize("build,config", [
    (LlamaForCausalLM, small_llama()),
    (LlamaForCausalLM, small_llama(tie_word_embeddings=False, attention_bias=True, mlp_bias=True)),
    (BertForMaskedLM, BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=128, max_position_embeddings=64)),
    (BertForMaskedLM, BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=128, max_position_embeddings=64, tie_word_embeddings=False)),
    (ModernBertForMaskedLM, modernbert()),
    (ModernBertForMaskedLM, modernbert(tie_word_embeddings=False, norm_bias=True, attention_bias=True,
                                       mlp_bias=True, classifier_bias=True)),
])
def test_state_bytes_match_the_built_model_exactly(build, config):
    model = build(config)
    n = sum(p.numel() for p in model.parameters())
    matrices = sum(p.numel() for p in transformer_blocks(model).parameters() if p.ndim == 2)  # Muon's share
    assert parameter_counts(config).total == n and parameter_counts(config).matrices == matrices
    adamw = estimate_memory(config, train(optimizer="adamw"), 1, 2, 32)
    assert (adamw.parameters, adamw.gradients, adamw.optimizer) == (4 * n, 4 * n, 8 * n)
    muon = estimate_memory(config, train(optimizer="muon"), 1, 2, 32)
    assert muon.optimizer == 8 * (n - matrices) + 4 * matrices  # one momentum for Muon's matrices
    sharded = estimate_memory(config, train(parallel="fsdp", optimizer="adamw"), 4, 2, 32)
    assert sharded.parameters == 4 * math.ceil(n / 4) and sharded.optimizer == 8 * math.ceil(n / 4)


def saved_for_backward(model, inputs, bf16: bool) -> int:
    """Bytes of the tensors autograd saves during a forward (parameters excluded; shared storage once)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", torch.bfloat16,
                                                                                      enabled=bf16):
        model.base_model(input_ids=inputs)
    return sum(seen.values())


@pytest.mark.parametrize("build,config", [(LlamaForCausalLM, small_llama(hidden_size=128, intermediate_size=352)),
                                          (ModernBertForMaskedLM, modernbert())])
@pytest.mark.parametrize("bf16", [False, True])
def test_activation_formula_matches_what_autograd_saves(build, config, bf16):
    torch.manual_seed(0)
    model = build(config)
    batch, seq_len = 2, 128
    measured = saved_for_backward(model, torch.randint(3, 1000, (batch, seq_len)), bf16)
    shape, counts = flops.model_shape(config), parameter_counts(config)
    per_layer = memory.layer_activation_bytes(shape, config, seq_len, bf16, "cpu")
    copies = 2 * counts.matrices if bf16 else 0  # autocast's cached bf16 weights
    predicted = shape.layers * per_layer * batch * seq_len + copies
    assert 0.9 < measured / predicted < 1.2, (measured, predicted)


def test_device_memory_on_cpu_splits_between_local_ranks(monkeypatch, tmp_path):
    monkeypatch.setattr(memory, "_host_available", lambda: 8 * GIB)
    monkeypatch.setattr(memory, "_cgroup_available", lambda: 6 * GIB)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert device_memory_bytes(torch.device("cpu")) == 3 * GIB
    assert available_memory(train(memory_gb=80), torch.device("cpu")) == (80_000_000_000, "train.memory_gb = 80")
    assert available_memory(train(), torch.device("cpu"))[1].startswith("detected")
    (tmp_path / "memory.max").write_text(f"{8 * GIB}\n")
    (tmp_path / "memory.current").write_text(f"{3 * GIB}\n")
    (tmp_path / "memory.stat").write_text(f"anon 1\ninactive_file {GIB}\n")
    monkeypatch.undo()
    assert memory._cgroup_available(tmp_path) == 6 * GIB  # limit - (usage - reclaimable page cache)
    (tmp_path / "memory.max").write_text("max\n")
    assert memory._cgroup_available(tmp_path) is None
