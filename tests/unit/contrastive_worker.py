"""Run by torchrun in tests: negatives gathered across 2 gloo ranks give the loss and gradients of one process on
the concatenated batch, under DDP and FSDP2, for SimCLR (ViT + head) and CLIP."""

import os
import sys

import torch
import torch.distributed as dist

from pretrain import storage
from pretrain.config import ModelConfig, TrainConfig
from pretrain.model.parallel import parallelize
from pretrain.model.vision import build_vision_model
from pretrain.train.augment import NONE
from pretrain.train.loop import init_distributed
from pretrain.train.objectives.contrastive import ContrastiveModule

N = 4  # per rank
VOCAB, SEQ = 40, 8


def make(objective: str, gather: bool) -> ContrastiveModule:
    arch = "vit" if objective == "image_contrastive" else "clip"
    cfg = ModelConfig(architecture=arch, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, seq_len=SEQ,
                      image_size=16, patch_size=8, projection_dim=16)
    hf = build_vision_model(cfg, seed=0, vocab_size=VOCAB, eos_id=0, pad_id=1)
    module = ContrastiveModule(hf, objective, temperature=0.2, gather=gather, augment=NONE, projection_dim=16)
    if hasattr(module, "head"):
        module.head.reset(1)
    return module


def batch(world: int):
    gen = torch.Generator().manual_seed(42)
    images = torch.randint(0, 256, (N * world, 16, 16, 3), dtype=torch.uint8, generator=gen)
    captions = torch.randint(3, VOCAB, (N * world, SEQ), generator=gen)
    lengths = torch.randint(2, SEQ + 1, (N * world,), generator=gen)
    positions = torch.arange(SEQ)[None]
    captions = torch.where(positions < lengths[:, None] - 1, captions, 1)
    captions[torch.arange(N * world), lengths - 1] = 0  # EOS, then padding
    mask = (positions < lengths[:, None]).long()
    return images, captions, mask


def full_grads(module) -> dict[str, torch.Tensor]:
    from torch.distributed.tensor import DTensor

    out = {}
    for name, p in module.named_parameters():
        g = p.grad
        out[name.removeprefix("module.")] = g.full_tensor() if isinstance(g, DTensor) else g
    return out


def main(out: str) -> None:
    d = init_distributed("gloo")
    images, captions, mask = batch(d.world)
    mine = slice(d.rank * N, (d.rank + 1) * N)
    result = {}
    for objective in ("image_contrastive", "image_text_contrastive"):
        ref = make(objective, gather=False)
        loss_ref = ref(images, captions, mask, mask_seed=0)
        loss_ref.backward()
        grads_ref = full_grads(ref)
        for parallel in ("ddp", "fsdp"):
            for gather in (True, False):
                wrapped = parallelize(make(objective, gather), TrainConfig(parallel=parallel), torch.device("cpu"))
                loss = wrapped(images[mine], captions[mine], mask[mine], mask_seed=0)
                loss.backward()
                mean = loss.detach().clone()
                dist.all_reduce(mean)
                mean /= d.world
                grads = full_grads(wrapped)
                result[f"{objective}/{parallel}/{'gather' if gather else 'local'}"] = {
                    "loss": mean.item(), "ref": loss_ref.item(),
                    "grad_diff": max((grads[k] - v).abs().max().item() for k, v in grads_ref.items()),
                    "grad_scale": max(v.abs().max().item() for v in grads_ref.values()),
                    "names_match": sorted(grads) == sorted(grads_ref)}
    if d.rank == 0:
        storage.write_json(out, result)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
