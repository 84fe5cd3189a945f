"""GPU paths of the contrastive objectives: CLIP and SimCLR under NCCL (negatives all-gathered), bf16 autocast,
regional torch.compile and FSDP2/DDP on CUDA.

Deselected by default (marker ``gpu``); ``tests/gpu/run.sh`` runs it on a GPU machine. The same logic runs on
CPU with gloo in tests/unit/test_contrastive_train.py and test_contrastive_objective.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from image_set import write_image_run

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize(("objective", "parallel"), [("image_text_contrastive", "fsdp"),
                                                     ("image_contrastive", "ddp")])
def test_contrastive_training_learns_on_gpu_in_bf16_compiled(objective, parallel, tmp_path):
    import torch

    assert torch.cuda.is_available(), "this test needs a CUDA GPU"
    gpus = torch.cuda.device_count()
    root = tmp_path / "run"
    _, url = write_image_run(str(root), [f"train.parallel={parallel}", "train.precision=bf16", "train.compile=true",
                                         "train.backend=auto", "train.max_steps=120", "train.eval_interval=120",
                                         "train.checkpoint_interval=120", "train.log_interval=20",
                                         "train.threads_per_process=4"], objective=objective)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}",
           "-m", "pretrain.train", "--config", url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=480, env=os.environ.copy())
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    rows = [json.loads(x) for x in (root / "train" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "val_loss" in r]
    summary = json.loads((root / "train" / "summary.json").read_text())
    assert summary["device"] == "cuda"
    assert evals[-1]["val_loss"] < evals[0]["val_loss"], evals
    if objective == "image_text_contrastive":  # 16 captions: in-batch retrieval far above its start
        assert evals[-1]["val_accuracy"] > 3 * evals[0]["val_accuracy"], evals
    out = Path(os.environ.get("OUT", "/tmp"))
    (out / f"gpu_{objective}_{parallel}.json").write_text(json.dumps({"evals": evals, "last": rows[-1]}, indent=2))
    print(objective, parallel, json.dumps({"evals": evals, "last": rows[-1]}))
