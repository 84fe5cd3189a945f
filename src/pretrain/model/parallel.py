"""parallelize(): apply activation checkpointing, torch.compile, DDP or FSDP2 from outside the model.

The model code stays single-device; these switches let the same loop run on CPU with gloo and on
GPUs with NCCL, bf16 and FSDP2.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from pretrain.config import TrainConfig


def parallelize(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.nn.Module:
    if cfg.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.to(device)
    in_group = dist.is_available() and dist.is_initialized()
    if cfg.parallel == "fsdp" and in_group:
        from torch.distributed.fsdp import fully_shard

        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model)
    if cfg.compile:
        model = torch.compile(model)
    if cfg.parallel == "ddp" and in_group and dist.get_world_size() > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return model


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain HF model under DDP / torch.compile wrappers (FSDP2 shards in place, no wrapper)."""
    while True:
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model
