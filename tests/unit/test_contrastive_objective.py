"""The contrastive losses against a hand computation, and negatives gathered across ranks (2-process gloo)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pretrain.config import ModelConfig
from pretrain.model.vision import build_vision_model
from pretrain.train.objectives import evaluate_sums
from pretrain.train.objectives.contrastive import MAX_LOGIT_SCALE, ContrastiveModule, clip_loss, nt_xent


def unit_rows(n: int, d: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


def by_hand_nt_xent(z1: torch.Tensor, z2: torch.Tensor, t: float) -> float:
    views = [*z1.tolist(), *z2.tolist()]
    n = len(z1)
    total = 0.0
    for i, a in enumerate(views):
        positive = (i + n) % (2 * n)
        scores = {j: sum(x * y for x, y in zip(a, b, strict=True)) / t for j, b in enumerate(views) if j != i}
        total += -scores[positive] + math.log(sum(math.exp(s) for s in scores.values()))
    return total / (2 * n)


def by_hand_clip(image: torch.Tensor, text: torch.Tensor, scale: float) -> float:
    n = len(image)
    sim = [[scale * sum(x * y for x, y in zip(a, b, strict=True)) for b in text.tolist()] for a in image.tolist()]
    i2t = sum(-sim[i][i] + math.log(sum(math.exp(s) for s in sim[i])) for i in range(n)) / n
    t2i = sum(-sim[i][i] + math.log(sum(math.exp(sim[j][i]) for j in range(n))) for i in range(n)) / n
    return (i2t + t2i) / 2


def test_nt_xent_matches_a_hand_computation():
    z1, z2 = unit_rows(3, 4, 0), unit_rows(3, 4, 1)
    assert nt_xent(z1, z2, 0.5).item() == pytest.approx(by_hand_nt_xent(z1, z2, 0.5), rel=1e-5)
    # two identical views and orthogonal images: the positive wins by far at a low temperature
    eye = torch.eye(3)
    assert nt_xent(eye, eye, 0.05).item() < 1e-6
    sums = nt_xent(z1, z2, 0.5, sums=True)
    assert sums.dtype == torch.float64 and sums[1] == 6
    assert (sums[0] / sums[1]).item() == pytest.approx(nt_xent(z1, z2, 0.5).item(), rel=1e-6)
    assert nt_xent(eye, eye, 0.05, sums=True)[2] == 6  # every view's best match is its other view


def test_clip_loss_matches_a_hand_computation_and_clamps_the_scale():
    image, text = unit_rows(4, 5, 2), unit_rows(4, 5, 3)
    log_scale = torch.tensor([math.log(1 / 0.07)])
    got = clip_loss(image, text, log_scale).item()
    assert got == pytest.approx(by_hand_clip(image, text, 1 / 0.07), rel=1e-5)
    huge = torch.tensor([10.0], requires_grad=True)  # exp(10) > 100: clamped, and no gradient past the clamp
    clip_loss(image, text, huge).backward()
    assert clip_loss(image, text, huge).item() == pytest.approx(by_hand_clip(image, text, MAX_LOGIT_SCALE), rel=1e-5)
    assert huge.grad.abs().item() == 0
    sums = clip_loss(image, text, log_scale, sums=True)
    assert sums[1] == 8 and (sums[0] / sums[1]).item() == pytest.approx(got, rel=1e-6)
    same = clip_loss(image, image, log_scale, sums=True)
    assert same[2] == 8  # captions identical to their images: every anchor finds its match


def tiny(architecture: str) -> ModelConfig:
    return ModelConfig(architecture=architecture, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                       seq_len=8, image_size=16, patch_size=8, projection_dim=16)


def test_modules_train_both_objectives_and_clip_starts_at_its_temperature():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (4, 20, 20, 3), dtype=torch.uint8)
    simclr = ContrastiveModule(build_vision_model(tiny("vit"), 0), "image_contrastive", projection_dim=16)
    loss = simclr(images, mask_seed=3)
    assert loss.item() == simclr(images, mask_seed=3).item() != simclr(images, mask_seed=4).item()  # views: seed
    loss.backward()
    assert simclr.head.fc1.weight.grad.abs().sum() > 0
    assert evaluate_sums(simclr, (images, None, None), 3)[1] == 8
    clip_model = build_vision_model(tiny("clip"), 0, vocab_size=30, eos_id=0, pad_id=1)
    assert clip_model.logit_scale.item() == pytest.approx(math.log(1 / 0.07), rel=1e-4)
    clip = ContrastiveModule(clip_model, "image_text_contrastive")
    captions = torch.tensor([[5, 6, 0, 1, 1, 1, 1, 1]] * 2 + [[7, 0, 1, 1, 1, 1, 1, 1]] * 2)
    mask = (torch.arange(8)[None] < torch.tensor([[3], [3], [2], [2]])).long()
    clip(images, captions, mask, mask_seed=1).backward()
    assert clip.model.logit_scale.grad is not None
    held_out = evaluate_sums(clip, (images, captions, mask), 0)
    assert held_out[1] == 8 and torch.equal(held_out, evaluate_sums(clip, (images, captions, mask), 99))  # no views
    exported = clip.exported()
    assert exported.logit_scale.shape == () and "logit_scale" in exported.state_dict()


def test_negatives_gathered_across_two_ranks_equal_one_process_on_the_whole_batch(tmp_path):
    out = tmp_path / "gather.json"
    worker = Path(__file__).with_name("contrastive_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(worker), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    for objective in ("image_contrastive", "image_text_contrastive"):
        for parallel in ("ddp", "fsdp"):
            gathered, local = result[f"{objective}/{parallel}/gather"], result[f"{objective}/{parallel}/local"]
            assert gathered["names_match"]
            assert gathered["loss"] == pytest.approx(gathered["ref"], rel=1e-5)
            assert gathered["grad_diff"] < 1e-5 * max(1.0, gathered["grad_scale"])
            # without the gather each rank only sees its own negatives: another loss, other gradients
            assert local["loss"] < gathered["ref"] - 0.1 and local["grad_diff"] > 1e-3 * gathered["grad_scale"]


@pytest.mark.parametrize("objective", ["image_contrastive", "image_text_contrastive"])
def test_flops_per_sample_counts_every_matmul_and_the_memory_estimate_counts_every_parameter(objective):
    from torch.utils.flop_counter import FlopCounterMode

    from pretrain.config import TrainConfig
    from pretrain.model.flops import flops_per_sample
    from pretrain.model.memory import estimate_vision_memory
    from pretrain.model.vision import image_features, text_features

    arch = "vit" if objective == "image_contrastive" else "clip"
    cfg = tiny(arch).model_copy(update={"patch_size": 4})
    hf = build_vision_model(cfg, 0, vocab_size=40, eos_id=0, pad_id=1)
    hf.set_attn_implementation("eager")  # attention as matmuls the counter sees (CPU flash attention it misses)
    module = ContrastiveModule(hf, objective, projection_dim=16)
    pixels, ids = torch.rand(4, 3, 16, 16), torch.randint(3, 40, (4, 8))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        if arch == "vit":  # both views: the ViT, its pooler and the head, per image
            module.head(hf(pixel_values=torch.cat([pixels, pixels])).pooler_output)
        else:  # an image and its caption
            image_features(hf, pixels), text_features(hf, ids)
    assert flops_per_sample(hf.config, objective, 16) == 3 * counter.get_total_flops() / 4  # forward + backward
    train = TrainConfig(objective=objective)
    small, large = (estimate_vision_memory(module, train, 1, m, device_type="cpu") for m in (8, 64))
    assert small.parameters == 4 * sum(p.numel() for p in module.parameters())
    assert large.activations > 4 * small.activations and large.total > small.total
