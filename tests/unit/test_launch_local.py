"""The local launcher's multi-node path for real: two torchrun agents (simulated nodes) meeting at a c10d
rendezvous on loopback train one model together; a failing node stops its peer instead of leaving it waiting."""

from __future__ import annotations

import json
import time

import pytest
from synthetic import write_synthetic_run

from pretrain.launch.local import LocalJob, run

SMALL = ["model.seq_len=32", "model.hidden_size=64", "model.intermediate_size=128", "model.num_layers=2",
         "train.micro_batch_size=4", "train.max_steps=6", "train.eval_interval=6", "train.checkpoint_interval=6",
         "train.log_interval=3", "train.eval_batches=2", "train.warmup_steps=2", "train.verify_tokens=false"]


def test_two_simulated_nodes_of_one_process_train_together(tmp_path):
    root = tmp_path / "run"
    _, url = write_synthetic_run(str(root), SMALL)
    run(LocalJob(url, nnodes=2, nproc_per_node=1, threads_per_process=1))
    summary = json.loads((root / "train" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["step"] == 6  # both nodes' ranks joined one group
    assert (root / "checkpoints" / "step-0000006" / "_COMMITTED").exists()
    assert (root / "checkpoints" / "step-0000006" / "rng-rank1.pt").exists()  # rank 1 (node 1) saved its state
    rows = [json.loads(line) for line in (root / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "val_loss" in r] == [0, 6]


def test_a_failing_node_stops_the_other(tmp_path, monkeypatch):
    (tmp_path / "half_fails.py").write_text(
        "import os, sys, time\n"
        "if os.environ['GROUP_RANK'] == '1':\n"
        "    sys.exit(3)\n"
        "time.sleep(600)\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="torchrun exit codes"):
        run(LocalJob("unused.yaml", nnodes=2, nproc_per_node=1, threads_per_process=1, module="half_fails"))
    assert time.monotonic() - start < 120  # not the 600 s node 0 would have slept
