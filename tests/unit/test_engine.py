"""The training engine under failure: kill -9, SIGTERM, resharding, anomalies, trajectory changes, foreign checkpoints.

The torchrun tests use real 2-process gloo groups; the others call ``train()`` in this process (a group of one).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from synthetic import write_synthetic_run

SMALL = ["model.seq_len=32", "model.hidden_size=32", "model.num_heads=2", "model.intermediate_size=64",
         "model.num_layers=2", "train.micro_batch_size=4", "train.lr=0.01", "train.warmup_steps=2",
         "train.eval_batches=1", "train.log_interval=1", "train.verify_tokens=false"]


def torchrun(config_url: str, nproc: int = 2, wait: bool = True):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "pretrain.train", "--config", config_url]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if wait:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def rows(root: Path) -> list[dict]:
    path = root / "train" / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):  # a line being written
            out.append(json.loads(line))
    return out


def losses(root: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in rows(root) if "loss" in r}


def committed(root: Path) -> list[int]:
    return sorted(int(p.parent.name[5:]) for p in (root / "checkpoints").glob("step-*/_COMMITTED"))


def wait_for(predicate, proc, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"the run ended first: {proc.stdout.read()[-3000:]}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_kill_9_of_a_rank_then_resume_is_bit_exact(tmp_path):
    common = [*SMALL, "train.max_steps=24", "train.checkpoint_interval=12", "train.eval_interval=1000",
              "train.async_checkpoint=on"]
    _, whole_url = write_synthetic_run(str(tmp_path / "whole"), common)
    whole = torchrun(whole_url)
    assert whole.returncode == 0, whole.stdout[-3000:] + whole.stderr[-3000:]
    root = tmp_path / "killed"
    _, url = write_synthetic_run(str(root), [*common, "train.micro_batch_size=4"])
    proc = torchrun(url, wait=False)
    wait_for(lambda: 12 in committed(root) and max(losses(root), default=0) >= 14, proc)
    ranks = [p for p in psutil.Process(proc.pid).children(recursive=True) if "pretrain.train" in " ".join(p.cmdline())]
    os.kill(ranks[-1].pid, signal.SIGKILL)
    assert proc.wait(timeout=120) != 0
    assert committed(root)[-1] == 12
    again = torchrun(url)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "resumed from" in again.stdout + again.stderr
    expected, got = losses(tmp_path / "whole"), losses(root)
    assert [got[s] for s in range(13, 25)] == [expected[s] for s in range(13, 25)]  # identical, not close


def test_sigterm_writes_a_checkpoint_before_exit_and_a_rerun_resumes_it(tmp_path):
    root = tmp_path / "run"
    _, url = write_synthetic_run(str(root), [*SMALL, "train.max_steps=150", "train.checkpoint_interval=1000",
                                             "train.eval_interval=1000"])
    proc = torchrun(url, wait=False)
    wait_for(lambda: max(losses(root), default=0) >= 5, proc)
    proc.send_signal(signal.SIGTERM)  # what the kubelet sends on eviction; torchrun forwards it to every rank
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode != 0
    assert "SIGTERM: checkpoint at step" in out, out[-3000:]
    saved = committed(root)
    assert saved and 5 <= saved[-1] < 150
    again = torchrun(url)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"resumed from {root / 'checkpoints' / f'step-{saved[-1]:07d}'}" in again.stdout + again.stderr


def test_fsdp_checkpoint_of_two_ranks_resumes_on_one(tmp_path):
    root = tmp_path / "run"
    common = [*SMALL, "train.parallel=fsdp", "train.checkpoint_interval=8", "train.eval_interval=1000",
              "train.decay_fraction=0"]  # wsd, constant: a longer budget extends the stable phase
    # the 2-rank run saves asynchronously: FSDP2's DTensor shards go through the CPU stager
    _, url = write_synthetic_run(str(root), [*common, "train.max_steps=8", "train.schedule=wsd",
                                             "train.async_checkpoint=on"])
    first = torchrun(url, nproc=2)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    _, url = write_synthetic_run(str(root), [*common, "train.max_steps=12", "train.schedule=wsd"])
    second = torchrun(url, nproc=1)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    out = second.stdout + second.stderr
    assert "resumed from" in out and "step-0000008" in out
    got = losses(root)
    assert sorted(got) == list(range(1, 13))
    assert got[9] < 1.15 * got[8]  # the resharded model continues, it does not start over
    assert committed(root)[-1] == 12


# -- in-process runs ----------------------------------------------------------------------------------------


def run_in_process(root: Path, overrides: list[str], **synthetic):
    from pretrain.config import load_recipe
    from pretrain.train.loop import train

    write_synthetic_run(str(root), overrides, **synthetic)
    return train(load_recipe(str(root / "recipe.yaml")))


def test_masked_lm_trains_an_encoder_that_exports_as_a_masked_lm(tmp_path):
    summary = run_in_process(tmp_path / "run", [*SMALL, "train.objective=masked_lm", "train.max_steps=40",
                                                "train.lr=0.005", "train.eval_interval=40", "train.warmup_steps=4",
                                                "train.optimizer=adamw", "train.schedule=cosine"],
                             mask_id=255)
    evals = [r["val_loss"] for r in summary["history"] if "val_loss" in r]
    assert evals[-1] < 0.8 * evals[0]  # it learns from the 15% it must fill in
    from pretrain.config import load_recipe

    assert load_recipe(str(tmp_path / "run" / "recipe.yaml")).model.architecture == "modernbert"


def test_continued_pretraining_starts_from_the_given_model_and_warms_the_lr_up_again(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    first = run_in_process(tmp_path / "base", [*SMALL, "train.max_steps=30", "train.eval_interval=30"])
    from pretrain.config import ModelConfig
    from pretrain.config import load_recipe as load_recipe_file
    from pretrain.model.build import build_model
    from pretrain.train.checkpoint import load_model_weights

    trained = load_recipe_file(tmp_path / "base" / "recipe.yaml").model  # its shape, QK-norm included
    base = build_model(ModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, seq_len=32,
                                   qk_norm=trained.qk_norm), 256, eos_id=0)
    load_model_weights(str(tmp_path / "base" / "checkpoints" / "step-0000030"), base)
    base.save_pretrained(tmp_path / "hf")  # a Hugging Face folder, as the export writes one
    assert isinstance(AutoModelForCausalLM.from_pretrained(tmp_path / "hf"), torch.nn.Module)
    trained_val = [r["val_loss"] for r in first["history"] if "val_loss" in r][-1]
    cont = run_in_process(tmp_path / "cont", [*SMALL, "train.max_steps=6", "train.eval_interval=1000",
                                              f"model.init_from={tmp_path / 'hf'}", "train.warmup_steps=3"])
    rows = cont["history"]
    assert rows[0]["val_loss"] == pytest.approx(trained_val, rel=1e-4)  # the given weights, not a fresh init
    lrs = [r["lr"] for r in rows if "lr" in r]
    assert lrs[0] < lrs[2]  # warmed up again
    with pytest.raises(ValueError, match=r"model\.init_from"):
        run_in_process(tmp_path / "bad", [*SMALL, "train.max_steps=2", f"model.init_from={tmp_path / 'base'}"])


def test_a_resume_that_would_jump_the_learning_rate_fails_and_a_wsd_extension_continues(tmp_path):
    base = [*SMALL, "train.checkpoint_interval=4", "train.eval_interval=1000"]
    run_in_process(tmp_path / "cos", [*base, "train.max_steps=8"])
    with pytest.raises(ValueError, match="max_steps"):
        run_in_process(tmp_path / "cos", [*base, "train.max_steps=16"])
    wsd = [*base, "train.schedule=wsd", "train.decay_fraction=0.5", "train.checkpoint_interval=2"]
    run_in_process(tmp_path / "wsd", [*wsd, "train.max_steps=8", "train.keep_checkpoints=10"])
    import shutil

    for step in (3, 4):  # resume from step 2, inside the stable phase of both budgets
        shutil.rmtree(tmp_path / "wsd" / "checkpoints" / f"step-{2 * step:07d}", ignore_errors=True)
    summary = run_in_process(tmp_path / "wsd", [*wsd, "train.max_steps=12"])
    assert summary["step"] == 12
    lrs = {r["step"]: r["lr"] for r in summary["history"] if "lr" in r}
    assert lrs[3] == pytest.approx(0.01) and lrs[6] == pytest.approx(0.01) and lrs[12] < lrs[8]


def test_checkpoints_of_another_model_under_the_run_root_are_a_clear_error(tmp_path):
    from pretrain.train.checkpoint import ForeignCheckpoint

    run_in_process(tmp_path / "run", [*SMALL, "train.max_steps=2", "train.eval_interval=1000"])
    with pytest.raises(ForeignCheckpoint, match="another model"):
        run_in_process(tmp_path / "run", [*SMALL, "train.max_steps=2", "model.hidden_size=64"])


def test_time_based_checkpoints_and_keep_every(tmp_path):
    summary = run_in_process(tmp_path / "run", [*SMALL, "train.max_steps=9", "train.checkpoint_interval=3",
                                                "train.keep_checkpoints=1", "train.keep_every=6",
                                                "train.eval_interval=1000"])
    assert summary["step"] == 9
    assert committed(tmp_path / "run") == [6, 9]  # the last one plus every 6th
    run_in_process(tmp_path / "timed", [*SMALL, "train.max_steps=4", "train.checkpoint_interval=1000",
                                        "train.checkpoint_minutes=0.000001", "train.keep_checkpoints=10",
                                        "train.eval_interval=1000"])
    assert committed(tmp_path / "timed") == [1, 2, 3, 4]


def poison(monkeypatch, bad_micro_steps: set[int]):
    """Make the loss non-finite on chosen micro-batches (identified by their masking seed)."""
    import torch

    from pretrain.train.objectives import TrainModule, mask_seed

    seeds = {mask_seed(0, i, 0) for i in bad_micro_steps}
    forward = TrainModule.forward

    def patched(self, windows, document_ids=None, mask_seed=None, sums=False):
        loss = forward(self, windows, document_ids, mask_seed=mask_seed, sums=sums)
        return loss * torch.tensor(float("nan")) if self.training and mask_seed in seeds else loss

    monkeypatch.setattr(TrainModule, "forward", patched)


def test_a_non_finite_step_is_skipped_or_rolled_back_and_endless_divergence_stops(tmp_path, monkeypatch):
    from pretrain.train.stability import Diverged

    poison(monkeypatch, {6})  # the batch of step 7
    base = [*SMALL, "train.max_steps=10", "train.checkpoint_interval=5", "train.eval_interval=1000"]
    skipped = run_in_process(tmp_path / "skip", base)
    anomalies = [r for r in skipped["history"] if "anomaly" in r]
    assert [(r["step"], r["action"]) for r in anomalies] == [(7, "skip")] and skipped["anomalies"] == 1
    assert all(r["loss"] == r["loss"] for r in skipped["history"] if "loss" in r and "anomaly" not in r)  # no NaN
    rolled = run_in_process(tmp_path / "roll", [*base, "train.stability.action=rollback"])
    anomalies = [r for r in rolled["history"] if "anomaly" in r]
    assert [(r["step"], r["action"]) for r in anomalies] == [(7, "rollback")] and rolled["step"] == 10
    poison(monkeypatch, set(range(100)))
    with pytest.raises(Diverged, match="max_anomalies=3"):
        run_in_process(tmp_path / "diverge", [*base, "train.stability.max_anomalies=3"])


def test_logged_numbers_lr_of_the_step_and_mfu_per_device(tmp_path, monkeypatch):
    monkeypatch.setenv("PRETRAIN_PEAK_FLOPS", "1e8")  # MFU of a few percent: six logged digits suffice
    summary = run_in_process(tmp_path / "run", [*SMALL, "train.max_steps=6", "train.warmup_steps=3",
                                                "train.eval_interval=1000"])
    logged = [r for r in summary["history"] if "loss" in r]
    # the lr each step used: warmup (s / 3) then cosine; the last step runs at exactly min_lr_ratio
    assert [r["lr"] for r in logged[:3]] == pytest.approx([0.01 / 3, 0.02 / 3, 0.01], abs=1e-6)
    assert logged[-1]["lr"] == pytest.approx(0.001, abs=1e-6)
    for r in logged:
        assert r["mfu"] == pytest.approx(r["tokens_per_second_per_device"] * summary["flops_per_token"] / 1e8,
                                         rel=1e-3)
        assert r["peak_memory_gb"] > 0
