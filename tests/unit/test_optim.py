"""Optimizers (weight-decay groups, Muon + AdamW as one optimizer, DCP round trips) and LR schedules."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from pretrain.config import TrainConfig
from pretrain.train.optim import OptimizerList, build_optimizer, parameter_groups_summary, split_parameters
from pretrain.train.schedule import build_scheduler, check_resume, current_lr, decay_start, lr_factor, trajectory

BLOCK_MATRICES = {f"model.layers.0.{name}.weight" for name in ("self_attn.q_proj", "self_attn.k_proj",
                  "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
NORMS = {"model.layers.0.input_layernorm.weight", "model.layers.0.post_attention_layernorm.weight", "model.norm.weight"}


def tiny_llama(seed: int = 0, tie: bool = True) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, max_position_embeddings=16, tie_word_embeddings=tie))


def names(model: torch.nn.Module, params) -> set[str]:
    by_id = {id(p): n for n, p in model.named_parameters()}
    return {by_id[id(p)] for p in params}


def train_step(model, optimizer, batch, scheduler=None) -> None:
    model(input_ids=batch, labels=batch).loss.backward()
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def batches(n: int, seed: int = 1) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 64, (2, 16), generator=gen) for _ in range(n)]


def same_params(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


# --- parameter groups ---

def test_adamw_groups_decay_only_matrices_that_are_not_embeddings():
    model = tiny_llama(tie=False)
    optimizer = build_optimizer(model, TrainConfig(optimizer="adamw", lr=1e-3, weight_decay=0.1, betas=(0.8, 0.9)))
    assert isinstance(optimizer, torch.optim.AdamW)
    decay, no_decay = optimizer.param_groups
    assert (decay["kind"], decay["weight_decay"], no_decay["kind"], no_decay["weight_decay"]) == (
        "decay", 0.1, "no_decay", 0.0)
    assert names(model, decay["params"]) == BLOCK_MATRICES | {"lm_head.weight"}  # an untied head is decayed
    assert names(model, no_decay["params"]) == NORMS | {"model.embed_tokens.weight"}
    assert decay["lr"] == 1e-3 and decay["betas"] == (0.8, 0.9)
    assert decay["fused"]  # the fused kernel runs on CPU too, and is the fastest there (see optim.py)
    tied = tiny_llama(tie=True)
    groups = split_parameters(tied)
    assert names(tied, groups["no_decay"]) == NORMS | {"model.embed_tokens.weight"}  # the tied head too, once
    assert names(tied, groups["decay"]) == BLOCK_MATRICES


def test_a_vits_learned_tokens_and_positions_are_not_decayed():
    from transformers import ViTConfig, ViTModel

    vit = ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                             image_size=16, patch_size=4))
    names = {id(p): n for n, p in vit.named_parameters()}
    groups = {k: {names[id(p)] for p in v} for k, v in split_parameters(vit).items()}
    assert {"embeddings.cls_token", "embeddings.position_embeddings"} <= groups["no_decay"]
    assert "embeddings.patch_embeddings.projection.weight" in groups["decay"]  # a conv kernel is a weight
    assert "layers.0.attention.q_proj.weight" in groups["decay"]


def test_muon_takes_the_block_matrices_and_adamw_the_rest():
    model = tiny_llama(tie=False)
    optimizer = build_optimizer(model, TrainConfig(optimizer="muon", lr=1e-3, muon_lr=0.01, muon_momentum=0.9))
    assert isinstance(optimizer, OptimizerList)
    kinds = {g["kind"]: g for g in optimizer.param_groups}
    assert [g["kind"] for g in optimizer.param_groups] == ["decay", "no_decay", "muon"]
    assert names(model, kinds["muon"]["params"]) == BLOCK_MATRICES
    assert names(model, kinds["decay"]["params"]) == {"lm_head.weight"}
    assert names(model, kinds["no_decay"]["params"]) == NORMS | {"model.embed_tokens.weight"}
    assert (kinds["muon"]["lr"], kinds["muon"]["momentum"], kinds["muon"]["adjust_lr_fn"]) == (
        0.01, 0.9, "match_rms_adamw")
    assert kinds["decay"]["lr"] == 1e-3
    summary = parameter_groups_summary(optimizer)
    assert summary == {"decay": 64 * 32, "no_decay": 64 * 32 + 3 * 32, "muon": 4 * 32 * 32 + 3 * 32 * 64}


def test_muon_groups_in_an_encoder():
    from transformers import ModernBertConfig, ModernBertForMaskedLM

    model = ModernBertForMaskedLM(ModernBertConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                                   num_hidden_layers=2, num_attention_heads=2, pad_token_id=0))
    groups = split_parameters(model, muon=True)
    muon = names(model, groups["muon"])
    assert muon and all(n.startswith("model.layers.") for n in muon)
    assert "model.embeddings.tok_embeddings.weight" in names(model, groups["no_decay"])
    assert "head.dense.weight" in names(model, groups["decay"])  # outside the blocks: AdamW


# --- the Muon + AdamW optimizer ---

def test_optimizer_list_steps_both_like_separate_optimizers():
    cfg = TrainConfig(optimizer="muon", lr=1e-2, muon_lr=0.05)
    model, reference = tiny_llama(), tiny_llama()
    optimizer = build_optimizer(model, cfg)
    ref_groups = split_parameters(reference, muon=True)
    separate = [
        torch.optim.AdamW([{"params": ref_groups["no_decay"], "weight_decay": 0.0}], lr=1e-2, betas=(0.9, 0.95)),
        torch.optim.Muon(ref_groups["muon"], lr=0.05, momentum=0.95, weight_decay=0.1,
                         adjust_lr_fn="match_rms_adamw"),
    ]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for batch in batches(2):
        train_step(model, optimizer, batch)
        reference(input_ids=batch, labels=batch).loss.backward()
        for opt in separate:
            opt.step()
            opt.zero_grad()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == set(before)  # Muon and AdamW parameters both moved
    assert all(p.grad is None for p in model.parameters())
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=name)  # fused vs for-each AdamW kernels
    assert len(optimizer.state) == len(before)


@pytest.mark.parametrize("name", ["adamw", "muon"])
def test_dcp_round_trip_gives_the_same_next_step(name, tmp_path):
    cfg = TrainConfig(optimizer=name, warmup_steps=2, max_steps=6)
    data = batches(3)
    model = tiny_llama(seed=0)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    for batch in data[:2]:
        train_step(model, optimizer, batch, scheduler)
    model_sd, optim_sd = get_state_dict(model, optimizer)
    assert any(k.startswith("model.layers.0.") for k in optim_sd["state"])  # keyed by parameter name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "assuming the intent is to save in a single process"
        dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=tmp_path)

        fresh = tiny_llama(seed=7)
        fresh_opt = build_optimizer(fresh, cfg)
        fresh_sched = build_scheduler(fresh_opt, cfg)
        model_sd, optim_sd = get_state_dict(fresh, fresh_opt)
        state = {"model": model_sd, "optimizer": optim_sd}
        dcp.load(state, checkpoint_id=tmp_path)
    set_state_dict(fresh, fresh_opt, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    fresh_sched.load_state_dict(scheduler.state_dict())
    assert same_params(model, fresh)
    assert [g["lr"] for g in fresh_opt.param_groups] == [g["lr"] for g in optimizer.param_groups]
    train_step(model, optimizer, data[2], scheduler)
    train_step(fresh, fresh_opt, data[2], fresh_sched)
    assert same_params(model, fresh)


def test_fsdp_muon_matches_one_device_and_a_two_rank_save_loads_on_one(tmp_path):
    """A real 2-process gloo group with FSDP2: Muon on sharded matrices equals Muon on one device, and its
    checkpoint loads into one unsharded process that then takes the same next step."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", __file__,
           str(tmp_path)]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = torch.load(tmp_path / "result.pt")
    cfg = TrainConfig(optimizer="muon")
    reference = tiny_llama(seed=0)
    ref_opt = build_optimizer(reference, cfg)
    for batch in result["batches"]:
        train_step(reference, ref_opt, batch)
    assert all(torch.equal(result["after"][k], v) for k, v in reference.state_dict().items())

    one = tiny_llama(seed=7)
    one_opt = build_optimizer(one, cfg)
    model_sd, optim_sd = get_state_dict(one, one_opt)
    state = {"model": model_sd, "optimizer": optim_sd}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(state, checkpoint_id=tmp_path / "ckpt")
    set_state_dict(one, one_opt, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    train_step(one, one_opt, result["batches"][-1])
    assert all(torch.equal(result["after"][k], v) for k, v in one.state_dict().items())


def _fsdp_worker(out: Path) -> None:
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    dist.init_process_group("gloo")
    data = batches(3)  # the same batches on both ranks: their mean gradient is the one-device gradient
    model = tiny_llama(seed=0)
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    optimizer = build_optimizer(model, TrainConfig(optimizer="muon"))
    assert all(isinstance(p, DTensor) for p in model.parameters())
    for batch in data[:2]:
        train_step(model, optimizer, batch)
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=out / "ckpt")
    train_step(model, optimizer, data[2])
    after = {k: v.full_tensor() for k, v in model.state_dict().items()}
    if dist.get_rank() == 0:
        torch.save({"batches": data, "after": after}, out / "result.pt")
    dist.destroy_process_group()


# --- schedules ---

def test_warmup_then_cosine_key_points():
    cfg = TrainConfig(schedule="cosine", warmup_steps=4, max_steps=24, min_lr_ratio=0.1)
    assert lr_factor(0, cfg) == 0.25  # never 0
    assert lr_factor(3, cfg) == 1.0  # the last warmup step is at the peak
    assert all(lr_factor(i, cfg) > lr_factor(i + 1, cfg) for i in range(3, 23))
    assert lr_factor(13, cfg) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 10 / 20)))
    assert lr_factor(23, cfg) == pytest.approx(0.1)  # the last step reaches min_lr_ratio
    assert lr_factor(100, cfg) == pytest.approx(0.1)
    assert lr_factor(0, TrainConfig(warmup_steps=0, max_steps=10)) > 0.9


def test_warmup_stable_decay_key_points():
    cfg = TrainConfig(schedule="wsd", warmup_steps=5, max_steps=100, decay_fraction=0.2, min_lr_ratio=0.0)
    assert decay_start(cfg) == 80
    assert lr_factor(0, cfg) == 0.2
    assert lr_factor(4, cfg) == 1.0
    assert all(lr_factor(i, cfg) == 1.0 for i in range(4, 80))  # stable until the last 20%
    assert lr_factor(80, cfg) == pytest.approx(1 - math.sqrt(1 / 20))  # 1-sqrt decay
    assert all(lr_factor(i, cfg) > lr_factor(i + 1, cfg) for i in range(79, 99))
    assert lr_factor(99, cfg) == 0.0
    assert lr_factor(99, cfg.model_copy(update={"min_lr_ratio": 0.1})) == pytest.approx(0.1)


@pytest.mark.parametrize("name", ["adamw", "muon"])
def test_lr_used_at_step_s_is_the_factor_of_s_minus_1(name):
    cfg = TrainConfig(optimizer=name, lr=1e-3, muon_lr=0.02, schedule="wsd", warmup_steps=3, max_steps=10,
                      decay_fraction=0.3)
    model = tiny_llama()
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    for s in range(1, 13):
        assert current_lr(optimizer) == pytest.approx(1e-3 * lr_factor(s - 1, cfg))
        for group in optimizer.param_groups:
            assert group["lr"] == pytest.approx(group["initial_lr"] * lr_factor(s - 1, cfg))
        optimizer.step()
        scheduler.step()
    assert {g["initial_lr"] for g in optimizer.param_groups} == ({1e-3, 0.02} if name == "muon" else {1e-3})


# --- resuming with another config ---

def test_check_resume_identical_and_json_round_trip():
    cfg = TrainConfig()
    saved = trajectory(cfg)
    assert saved["betas"] == [0.9, 0.95] and set(saved) >= {"lr", "schedule", "max_steps", "objective"}
    assert check_resume(saved, cfg, 50) is None
    assert check_resume({"lr": cfg.lr}, cfg, 50) is None  # keys an older checkpoint lacks are not compared


def test_check_resume_wsd_longer_run_before_decay_is_a_note():
    old = TrainConfig(schedule="wsd", max_steps=100, decay_fraction=0.2)
    new = old.model_copy(update={"max_steps": 200})
    note = check_resume(trajectory(old), new, 80)
    assert note and "after step 160 (was 80)" in note
    with pytest.raises(ValueError, match=r"train.max_steps: 100 -> 200 \(wsd: step 81 is past"):
        check_resume(trajectory(old), new, 81)  # step 81 already decayed under the old schedule
    with pytest.raises(ValueError, match="max_steps: 200 -> 100"):
        check_resume(trajectory(new), old, 90)  # ... or would have under the new one


def test_check_resume_cosine_and_lr_changes_name_each_key():
    old = TrainConfig(schedule="cosine", max_steps=100)
    new = old.model_copy(update={"max_steps": 200, "lr": 1e-3})
    with pytest.raises(ValueError) as err:
        check_resume(trajectory(old), new, 10)
    message = str(err.value)
    assert "train.max_steps: 100 -> 200" in message and "train.lr: 0.003 -> 0.001" in message
    assert "model.init_from" in message and "run root" in message


def test_check_resume_batch_change_is_a_note_other_changes_are_not():
    old = TrainConfig(micro_batch_size=8, schedule="cosine")
    assert "micro_batch_size 8 -> 4" in check_resume(trajectory(old), old.model_copy(update={"micro_batch_size": 4}), 5)
    with pytest.raises(ValueError, match=r"train.schedule: \"cosine\" -> \"wsd\""):
        check_resume(trajectory(old), old.model_copy(update={"schedule": "wsd"}), 5)


if __name__ == "__main__":  # run by torchrun from test_fsdp_muon_matches_one_device_and_a_two_rank_save_loads_on_one
    _fsdp_worker(Path(sys.argv[1]))
    # Results written, process group destroyed: skip the interpreter's teardown, where gloo's threads were seen
    # to abort ("terminate called without an active exception") or hang under load, as pretrain.train does.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
