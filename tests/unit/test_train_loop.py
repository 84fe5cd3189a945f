"""The training loop in real 2-process gloo groups: DDP and FSDP2 learn, checkpoint and resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from synthetic import write_synthetic_run


def torchrun(config_url: str, nproc: int = 2) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "pretrain.train", "--config", config_url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize("parallel,masking", [("ddp", False), ("fsdp", True)])
def test_loop_learns_checkpoints_and_resumes(parallel, masking, tmp_path):
    common = [f"train.parallel={parallel}", f"train.document_masking={str(masking).lower()}", "model.seq_len=32",
              "model.hidden_size=64",
              "model.intermediate_size=128", "train.micro_batch_size=8", "train.lr=0.01", "train.warmup_steps=5",
              "train.eval_interval=30", "train.checkpoint_interval=30", "train.log_interval=10",
              "train.eval_batches=3", "train.grad_accum_steps=2", "train.schedule=wsd",
              "train.decay_fraction=0"]  # 3 eval batches over 2 ranks: uneven; a constant lr can be extended
    _, url = write_synthetic_run(str(tmp_path / "run"), [*common, "train.max_steps=30"])
    first = torchrun(url)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    rows = [json.loads(x) for x in (tmp_path / "run" / "train" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in evals] == [0, 30]
    assert evals[-1]["val_loss"] < 0.8 * evals[0]["val_loss"]
    assert (tmp_path / "run" / "checkpoints" / "step-0000030" / "_COMMITTED").exists()
    # A longer budget continues from step 30 instead of starting over (wsd: its stable phase is extended).
    _, url = write_synthetic_run(str(tmp_path / "run"), [*common, "train.max_steps=40"])
    second = torchrun(url)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "[checkpoint] resumed from" in second.stdout + second.stderr
    rows = [json.loads(x) for x in (tmp_path / "run" / "train" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "loss" in r]
    assert steps == sorted(steps) and steps[-1] == 40 and 40 > steps[-2] >= 30


def test_document_masking_trains_a_packed_window_as_its_documents_alone():
    import torch

    from pretrain.config import ModelConfig
    from pretrain.model.build import build_model
    from pretrain.model.masking import document_attention
    from pretrain.tokens import document_ids
    from pretrain.train.objectives import TrainModule

    model = build_model(ModelConfig(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, seq_len=32),
                        300, eos_id=0).eval()
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randint(3, 300, (6,), generator=gen), torch.randint(3, 300, (10,), generator=gen)
    window = torch.cat([a, torch.tensor([0]), b])[None]  # document a, its EOS, document b
    docs = torch.from_numpy(document_ids(window.numpy(), 0))
    assert docs.tolist() == [[0] * 7 + [1] * 10]
    mask, positions = document_attention(docs)
    assert positions.tolist() == [list(range(7)) + list(range(10))]
    assert mask.shape == (1, 1, 17, 17) and not mask[0, 0, 7, :7].any() and mask[0, 0, 7, 7]
    with torch.no_grad():
        packed = model(input_ids=window, attention_mask=mask, position_ids=positions).logits
        alone = model(input_ids=b[None]).logits
        unmasked = model(input_ids=window).logits
    assert torch.allclose(packed[:, 7:], alone, atol=1e-5)  # b sees nothing of a
    assert not torch.allclose(unmasked[:, 7:], alone, atol=1e-3)  # without the mask it does
    with torch.no_grad():
        objective = TrainModule(model, "causal_lm")
        assert objective(window, docs) != objective(window)
