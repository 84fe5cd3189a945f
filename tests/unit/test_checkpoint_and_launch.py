from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pretrain import storage
from pretrain.launch.local import LocalJob, torchrun_commands
from pretrain.train.checkpoint import committed_steps

WORKER = Path(__file__).with_name("ckpt_worker.py")


def run_worker(root: str, out: Path) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(WORKER),
           root, str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("where", ["local", "s3"])
def test_two_process_checkpoint_save_prune_restore(where, tmp_path, request):
    root = str(tmp_path / "ckpt") if where == "local" else request.getfixturevalue("s3") + "/ckpt"
    result = run_worker(root, tmp_path / "result.json")
    assert result["world"] == 2
    assert result["step"] == 3                  # the latest committed one, not the partial step 4
    assert result["same_weights"] and result["lr_restored"]
    assert result["optimizer_steps"] == 3.0
    assert result["other_fingerprint"] == "ForeignCheckpoint"  # a checkpoint of another config is an error
    assert committed_steps(root) == [2, 3]        # keep=2 pruned step 1
    assert storage.exists(storage.join(root, "step-0000003", ".metadata"))
    assert storage.exists(storage.join(root, "step-0000003", "rng-rank1.pt"))


def test_torchrun_commands_single_and_multi_node():
    one = torchrun_commands(LocalJob("cfg.yaml", nnodes=1, nproc_per_node=2))
    assert len(one) == 1 and "--standalone" in one[0] and "--nproc-per-node=2" in one[0]
    assert one[0][-4:] == ["-m", "pretrain.train", "--config", "cfg.yaml"]
    two = torchrun_commands(LocalJob("cfg.yaml", nnodes=2, nproc_per_node=1), port=29999, run_id="r1")
    assert [c[c.index("--nnodes=2") + 1] for c in two] == ["--node-rank=0", "--node-rank=1"]
    assert all("--rdzv-endpoint=127.0.0.1:29999" in c and "--rdzv-id=r1" in c for c in two)


def test_checkpoints_of_another_config_are_an_error_and_never_pruned(tmp_path):
    import torch

    from pretrain.config import ModelConfig, TrainConfig
    from pretrain.model.build import build_model
    from pretrain.train.checkpoint import CheckpointManager, ForeignCheckpoint
    from pretrain.train.schedule import build_scheduler

    def parts():
        model = build_model(ModelConfig(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, seq_len=8),
                            vocab_size=32, eos_id=0)
        opt = torch.optim.AdamW(model.parameters())
        return model, opt, build_scheduler(opt, TrainConfig(warmup_steps=1, max_steps=10))

    root = str(tmp_path / "ckpt")
    old, new = CheckpointManager(root, keep=2, fingerprint="old"), CheckpointManager(root, keep=2, fingerprint="new")
    for step in (1, 2, 3):
        old.save(step, *parts())
    assert old.steps() == [2, 3]
    with pytest.raises(ForeignCheckpoint, match="another model, seed or token data"):
        new.restore(*parts())
    new.save(4, *parts())                 # saving (the manager of a test) still never prunes the other config's
    assert new.steps() == [4] and old.steps() == [2, 3]
    assert committed_steps(root) == [2, 3, 4]
