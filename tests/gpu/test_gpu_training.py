"""GPU paths of the training engine: NCCL, bf16 autocast, torch.compile and FSDP2 on CUDA.

Deselected by default (marker ``gpu``); ``tests/gpu/run.sh`` runs it on a GPU machine. The same loop's
logic runs on CPU with gloo in tests/unit/test_train_loop.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from synthetic import write_synthetic_run

pytestmark = pytest.mark.gpu


def torchrun(config_url: str, nproc: int) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "pretrain.train", "--config", config_url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=480, env=os.environ.copy())


def report(name: str, data: dict) -> None:
    out = Path(os.environ.get("OUT", "/tmp"))
    (out / f"{name}.json").write_text(json.dumps(data, indent=2))
    print(name, json.dumps(data))


@pytest.fixture(scope="module")
def gpus() -> int:
    import torch

    assert torch.cuda.is_available(), "this test needs a CUDA GPU"
    return torch.cuda.device_count()


@pytest.mark.parametrize("parallel", ["fsdp", "ddp"])
def test_bf16_compiled_training_learns_and_resumes_on_gpu(parallel, gpus, tmp_path):
    common = [f"train.parallel={parallel}", "train.precision=bf16", "train.compile=true", "train.backend=auto",
              "model.seq_len=128", "model.hidden_size=256", "model.num_heads=4", "model.intermediate_size=512",
              "train.micro_batch_size=16", "train.lr=0.005", "train.warmup_steps=10", "train.eval_interval=60",
              "train.checkpoint_interval=60", "train.log_interval=20", "train.eval_batches=4"]
    _, url = write_synthetic_run(str(tmp_path / "run"), [*common, "train.max_steps=60"], vocab=512)
    first = torchrun(url, gpus)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    rows = [json.loads(x) for x in (tmp_path / "run" / "train" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "val_loss" in r]
    summary = json.loads((tmp_path / "run" / "train" / "summary.json").read_text())
    assert summary["device"] == "cuda"
    assert evals[-1]["val_loss"] < 0.6 * evals[0]["val_loss"], evals
    _, url = write_synthetic_run(str(tmp_path / "run"), [*common, "train.max_steps=80"], vocab=512)
    second = torchrun(url, gpus)
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-4000:]
    assert "[checkpoint] resumed from" in second.stdout
    report(f"gpu_{parallel}", {"evals": evals, "last": rows[-1]})


def test_gpu_throughput_and_mfu(gpus, tmp_path):
    """A ~125M-parameter model, bf16 + compile + FSDP2: tokens/s and MFU as the loop reports them."""
    cfg = ["train.parallel=fsdp", "train.precision=bf16", "train.compile=true", "model.seq_len=1024",
           "model.hidden_size=768", "model.num_layers=12", "model.num_heads=12", "model.intermediate_size=2048",
           "train.micro_batch_size=32", "train.max_steps=40", "train.warmup_steps=5", "train.log_interval=5",
           "train.eval_interval=1000", "train.checkpoint_interval=1000", "train.eval_batches=2",
           "evaluate.batch_size=8"]
    _, url = write_synthetic_run(str(tmp_path / "run"), cfg, vocab=32000, docs=128, doc_len=4096)
    proc = torchrun(url, gpus)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    rows = [json.loads(x) for x in (tmp_path / "run" / "train" / "metrics.jsonl").read_text().splitlines()]
    steady = [r for r in rows if "tokens_per_second" in r and r["step"] >= 20]
    tps = sorted(r["tokens_per_second"] for r in steady)[len(steady) // 2]
    mfu = sorted(r.get("mfu", 0.0) for r in steady)[len(steady) // 2]
    report("gpu_throughput", {"tokens_per_second": tps, "mfu": mfu, "gpus": gpus, "rows": steady})
    assert tps > 0
