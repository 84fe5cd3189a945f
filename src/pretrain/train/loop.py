"""The training loop: short on purpose; checkpointing, logging and throughput are callbacks.

Every rank runs the same code. Batches come from ``TokenLoader.batch(step, rank, world, batch)``, a pure
function of the step, so the loader needs no state beyond the step number to resume.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from pretrain.config import Recipe
from pretrain.manifest import Manifest
from pretrain.model.build import build_model, flops_per_token
from pretrain.model.masking import document_attention
from pretrain.model.parallel import parallelize, unwrap
from pretrain.tokens import SequentialWindows, TokenLoader, mixture_epochs, shard_refs, split_urls, verify_shards
from pretrain.train.callbacks import Callback, Checkpointing, MetricsLog, Throughput, TrainState
from pretrain.train.checkpoint import CheckpointManager, checkpoint_fingerprint

PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12}


@dataclass
class Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device


def init_distributed(backend: str) -> Dist:
    """Join torchrun's process group (gloo on CPU, NCCL on GPU); a plain process is a group of one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and backend != "gloo"
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if "RANK" in os.environ and not dist.is_initialized():  # under torchrun, even as a group of one (FSDP2)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", device_id=device if use_cuda else None)
    rank = dist.get_rank() if dist.is_initialized() else 0
    return Dist(rank=rank, world=world, local_rank=local_rank, device=device)


def lr_lambda(warmup: int, total: int, min_ratio: float):
    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return schedule


def loader_anchor(saved: dict | None, micro_step: int, world: int, micro_batch: int) -> tuple[int, int]:
    """Where the sample stream stands when resuming: the saved anchor when the world size and micro-batch are
    the same; else (this micro-step, the samples consumed so far), so the stream continues with no sample
    repeated or skipped within the epoch."""
    if not saved:
        return (0, 0)
    old_anchor = (int(saved["anchor"][0]), int(saved["anchor"][1]))
    if int(saved["world"]) == world and int(saved["micro_batch"]) == micro_batch:
        return old_anchor
    return (micro_step, TokenLoader.samples_before(micro_step, int(saved["world"]), int(saved["micro_batch"]),
                                                   old_anchor))


def causal_lm_loss(model, windows: torch.Tensor, document_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token loss over windows of seq_len+1 tokens; with ``document_ids``, attention stays in each document."""
    if document_ids is None:
        logits = model(input_ids=windows[:, :-1]).logits
    else:
        mask, positions = document_attention(document_ids[:, :-1])
        logits = model(input_ids=windows[:, :-1], attention_mask=mask, position_ids=positions).logits
    return F.cross_entropy(logits.flatten(0, 1).float(), windows[:, 1:].flatten())


def peak_flops(device: torch.device, precision: str) -> float | None:
    if os.environ.get("PRETRAIN_PEAK_FLOPS"):
        return float(os.environ["PRETRAIN_PEAK_FLOPS"])
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return next((v for k, v in PEAK_FLOPS.items() if k in name), None)
    return None


def all_reduce_mean(value: torch.Tensor, device: torch.device) -> float:
    t = value.detach().to(device=device, dtype=torch.float64).reshape(1)
    if dist.is_initialized():
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return t.item()


@torch.no_grad()
def evaluate_loss(model, data: SequentialWindows, batch: int, max_batches: int, d: Dist, autocast) -> float:
    """Mean loss over the same fixed validation windows every time, split across ranks.

    Every rank runs the same number of forward passes (a rank short of batches repeats one and
    discards it), as FSDP's collectives require.
    """
    model.eval()
    batches = list(data.batches(batch, max_batches))
    total, count = 0.0, 0
    for j in range(-(-len(batches) // d.world)):
        i = j * d.world + d.rank
        windows = torch.from_numpy(batches[i if i < len(batches) else 0]).to(d.device)
        with autocast():
            loss = causal_lm_loss(model, windows)
        if i < len(batches):
            total, count = total + loss.item() * len(windows), count + len(windows)
    model.train()
    t = torch.tensor([total, count], dtype=torch.float64, device=d.device)
    if dist.is_initialized():
        dist.all_reduce(t)
    return (t[0] / t[1]).item()


def train(recipe: Recipe) -> dict:
    cfg = recipe.train
    d = init_distributed(cfg.backend)
    torch.set_num_threads(cfg.threads_per_process or max(1, (os.cpu_count() or 1) // int(
        os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    tokens = Manifest.load(recipe.url("tokens"))
    vocab, eos = int(tokens.extra["vocab_size"]), int(tokens.extra["eos_id"])
    if cfg.verify_tokens:
        verify_shards(tokens.shards, d.rank, d.world)
    train_data = TokenLoader(shard_refs(tokens.shards, "train"), recipe.model.seq_len, recipe.seed,
                             epochs=mixture_epochs(tokens.extra), document_masking=cfg.document_masking)
    val_data = SequentialWindows(split_urls(tokens.shards, "val"), recipe.model.seq_len)

    model = build_model(recipe.model, vocab, eos, seed=recipe.seed)
    fpt = flops_per_token(model, recipe.model.seq_len)
    model = parallelize(model, cfg, d.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.warmup_steps, cfg.max_steps,
                                                                       cfg.min_lr_ratio))
    ckpt = CheckpointManager(recipe.url("checkpoints"), cfg.keep_checkpoints,
                             checkpoint_fingerprint(recipe.model.model_dump(), recipe.seed, tokens.fingerprint))
    start = ckpt.restore(model, optimizer, scheduler)
    anchor = loader_anchor(ckpt.extra(start).get("loader") if start else None, start * cfg.grad_accum_steps,
                           d.world, cfg.micro_batch_size)
    use_bf16 = cfg.precision == "bf16"

    def autocast():
        return torch.autocast(d.device.type, dtype=torch.bfloat16, enabled=use_bf16)

    state = TrainState(step=start, max_steps=cfg.max_steps, rank=d.rank, flops_per_token=fpt,
                       tokens_per_step=cfg.micro_batch_size * cfg.grad_accum_steps * recipe.model.seq_len * d.world,
                       peak_flops=peak_flops(d.device, cfg.precision))
    log = MetricsLog(recipe.url("train", "metrics.jsonl"), start, d.rank)

    def save(step: int) -> str:
        micro_step = step * cfg.grad_accum_steps
        loader = {"world": d.world, "micro_batch": cfg.micro_batch_size, "anchor": list(anchor),
                  "micro_step": micro_step,
                  "samples": TokenLoader.samples_before(micro_step, d.world, cfg.micro_batch_size, anchor)}
        return ckpt.save(step, model, optimizer, scheduler, {"tokens_seen": step * state.tokens_per_step,
                                                               "loader": loader})

    def checkpointed(state: TrainState, url: str) -> None:
        for cb in callbacks:
            cb.on_checkpoint(state, url)

    callbacks: list[Callback] = [Throughput(), log]
    callbacks.append(Checkpointing(save, cfg.checkpoint_interval, checkpointed))

    def run_eval() -> None:
        loss = evaluate_loss(model, val_data, recipe.evaluate.batch_size, cfg.eval_batches, d, autocast)
        metrics = {"val_loss": loss, "val_perplexity": math.exp(min(loss, 50))}
        for cb in callbacks:
            cb.on_eval(state, metrics)

    if start == 0:
        run_eval()
    model.train()
    for step in range(start + 1, cfg.max_steps + 1):
        state.step = step
        optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=d.device)
        for micro in range(cfg.grad_accum_steps):
            rows = train_data.batch((step - 1) * cfg.grad_accum_steps + micro, d.rank, d.world, cfg.micro_batch_size,
                                    anchor)
            windows = torch.from_numpy(rows.tokens).to(d.device)
            documents = None if rows.document_ids is None else torch.from_numpy(rows.document_ids).to(d.device)
            last = micro == cfg.grad_accum_steps - 1
            sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
            with sync:  # DDP all-reduces gradients on the last micro-batch only
                with autocast():
                    loss = causal_lm_loss(model, windows, documents) / cfg.grad_accum_steps
                loss.backward()
            total += loss.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
        optimizer.step()
        scheduler.step()
        metrics: dict[str, float] = {}
        if step % cfg.log_interval == 0 or step == cfg.max_steps:  # the only host sync of a training step
            metrics = {"loss": all_reduce_mean(total, d.device), "lr": scheduler.get_last_lr()[0],
                       "grad_norm": float(grad_norm)}
        for cb in callbacks:
            cb.on_step(state, metrics)
        if step % cfg.eval_interval == 0 or step == cfg.max_steps:
            run_eval()
    for cb in callbacks:
        cb.on_end(state)
    consumed = TokenLoader.samples_before(state.step * cfg.grad_accum_steps, d.world, cfg.micro_batch_size, anchor)
    trained = {k: v * recipe.model.seq_len for k, v in train_data.sources_of(0, consumed).items()}
    summary = {"step": state.step, "history": log.rows, "world_size": d.world, "device": d.device.type,
               "parameters": sum(p.numel() for p in unwrap(model).parameters()),
               "trained_tokens_by_source": trained}
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return summary
