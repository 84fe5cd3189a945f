"""The training loop: short on purpose; checkpointing, logging and throughput are callbacks.

Every rank runs the same code. Batches come from ``TokenLoader.batch(index, rank, world, batch)`` (text) or
``ImageLoader.batch(...)`` (image objectives: the samples manifest), a pure function of the data step, so the
loader needs no state beyond the step number (and the batches a rollback skipped) to resume; ``batch_inputs``
are the objective module's positional inputs, whichever the modality. The objective, the optimizer, the
schedule and the parallel layout are each built by their own module; the loop only orders them and decides,
once per step on every rank alike, whether the step updates the model and whether a checkpoint is due.
"""

from __future__ import annotations

import math
import os
import platform
import resource
import signal
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from pretrain.config import Recipe, RecipeError
from pretrain.manifest import Manifest
from pretrain.model.build import build_model, check_vocab, init_weights, load_pretrained
from pretrain.model.flops import flops_per_sample, flops_per_token, matmul_precision, peak_flops
from pretrain.model.memory import available_memory, check_fits, estimate_memory, estimate_vision_memory
from pretrain.model.parallel import clip_grad_norm, gradient_sync, parallelize, unwrap
from pretrain.model.vision import build_vision_model
from pretrain.observe.callbacks import observer_callbacks
from pretrain.tokens import (
    Batch,
    SequentialWindows,
    TokenLoader,
    mixture_epochs,
    shard_refs,
    split_urls,
    verify_shards,
)
from pretrain.tokens.images import ImageBatches, image_data
from pretrain.train.callbacks import Callback, Checkpointing, MetricsLog, Throughput, TrainState
from pretrain.train.checkpoint import CheckpointManager, checkpoint_fingerprint
from pretrain.train.objectives import TrainModule, evaluate_sums, mask_seed, trained_part
from pretrain.train.objectives.contrastive import ContrastiveModule
from pretrain.train.optim import build_optimizer
from pretrain.train.schedule import build_scheduler, check_resume, current_lr, trajectory
from pretrain.train.stability import StabilityGuard

PREEMPTED_EXIT = 143  # 128 + SIGTERM: the job is retried and resumes from the checkpoint just written
# The wrapped model (DDP's Reducer, FSDP's groups) holds the gloo process group. Freeing it when ``train`` returns
# ran ~ProcessGroupGloo, which joins gloo's worker threads while holding the GIL, and a worker still releasing the
# last barrier's tensors waits for the GIL: a deadlock seen at the end of 2-rank runs (py-spy: main thread in
# Reducer dealloc -> thread::join, worker in gil_scoped_acquire). So a distributed run's model and optimizer stay
# referenced here; the entry point ends the process with os._exit once everything is written.
_KEEP_ALIVE: list[object] = []


class Preempted(SystemExit):
    """SIGTERM (pod eviction, spot preemption): a checkpoint was written, the process exits non-zero."""


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


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # peak RSS (KiB on Linux)


def batch_inputs(rows) -> tuple:
    """The objective module's positional inputs: (token windows, document ids or None) of a text ``Batch``, or an
    ``ImageBatch``'s (images, captions, attention mask); CPU tensors, the module moves them."""
    if isinstance(rows, Batch):
        return (torch.from_numpy(rows.tokens),
                None if rows.document_ids is None else torch.from_numpy(rows.document_ids))
    return rows.inputs()


@torch.no_grad()
def held_out_sums(module, data: SequentialWindows | ImageBatches, batch: int, max_batches: int, d: Dist, autocast,
                  seed: int) -> torch.Tensor:
    """[summed loss, tokens (anchors for image objectives), correct] (fp64) over the same fixed validation batches
    (and masks, or views) every time, summed over ranks.

    Split across ranks; every rank runs the same number of forward passes (a rank short of batches repeats
    one and discards it), as FSDP's collectives require. The masks are the evaluate step's, so a masked
    LM's ``val_loss`` here and there agree. Compiled blocks run eagerly here: a few held-out batches do not
    repay compiling a second (no-grad) graph, which would double the cold start of a compiled run.
    """
    module.eval()
    batches = list(data.batches(batch, max_batches))
    total = torch.zeros(3, dtype=torch.float64)
    with torch.compiler.set_stance("force_eager"):
        for j in range(-(-len(batches) // d.world)):
            i = j * d.world + d.rank
            rows = batches[i if i < len(batches) else 0]
            inputs = torch.from_numpy(rows) if isinstance(rows, np.ndarray) else rows.inputs()  # windows, or images
            with autocast():
                sums = evaluate_sums(module, inputs, mask_seed(seed, "eval", i))
            if i < len(batches):
                total += sums.double().cpu()
    module.train()
    t = total.to(d.device)
    if dist.is_initialized():
        dist.all_reduce(t)
    return t.cpu()


def evaluate_loss(module, data: SequentialWindows | ImageBatches, batch: int, max_batches: int, d: Dist, autocast,
                  seed: int) -> float:
    """Mean held-out loss per predicted token (per anchor for image objectives); see ``held_out_sums``."""
    t = held_out_sums(module, data, batch, max_batches, d, autocast, seed)
    return (t[0] / t[1]).item()


class StopSignal:
    """SIGTERM sets a flag; the loop agrees on it across ranks at the end of the step and checkpoints."""

    def __init__(self) -> None:
        self.received = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        self.received = True

    def restore(self) -> None:
        signal.signal(signal.SIGTERM, self._previous)


def build_module(recipe: Recipe, tokens: Manifest, d: Dist):
    """The model (fresh or continued from ``model.init_from``) inside its objective, checked to fit; with its
    training FLOPs per token (per sample for image objectives) and memory estimate."""
    if recipe.modality != "text":
        return build_contrastive(recipe, tokens, d)
    cfg = recipe.train
    vocab = int(tokens.extra["vocab_size"])
    special = {"eos": int(tokens.extra["eos_id"]), "pad": tokens.extra.get("pad_id"),
               "mask": tokens.extra.get("mask_id")}
    available, source = available_memory(cfg, d.device)  # before the model takes any of it
    meta = cfg.init_device == "meta" or (cfg.init_device == "auto" and cfg.parallel == "fsdp" and d.world > 1)
    if recipe.model.init_from:
        hf = load_pretrained(recipe.model.init_from, cfg.objective, recipe.model.seq_len, vocab)
        meta = False
    else:
        hf = build_model(recipe.model, vocab, special["eos"], special["pad"], recipe.seed, mask_id=special["mask"],
                         device="meta" if meta else "cpu")
    check_vocab(hf, vocab)
    estimate = estimate_memory(hf.config, cfg, d.world, cfg.micro_batch_size, recipe.model.seq_len,
                               device_type=d.device.type)
    if available:
        check_fits(estimate, available, source)
    fpt = flops_per_token(hf.config, recipe.model.seq_len, cfg.objective, cfg.mask_probability)
    module = TrainModule(hf, cfg.objective, cfg.loss, cfg.mask_probability, special, vocab,
                         tokenizer=tokens.extra.get("tokenizer") or None, z_loss=cfg.z_loss)
    init = (lambda m: init_weights(m, recipe.seed, recipe.model.init)) if meta else None
    module = parallelize(module, cfg, d.device, init=init)
    return module, fpt, estimate


def build_contrastive(recipe: Recipe, samples: Manifest, d: Dist):
    """A ViT (+ SimCLR's head) or CLIPModel inside its contrastive objective, initialized from the seed (on the
    device, or materialized there from meta under FSDP2 as text models are), checked to fit."""
    cfg, extra = recipe.train, samples.extra
    if recipe.model.init_from:
        raise RecipeError(f"model.init_from: continued pre-training is not supported for train.objective "
                          f"{cfg.objective} yet (only causal_lm and masked_lm)")
    available, source = available_memory(cfg, d.device)
    meta = cfg.init_device == "meta" or (cfg.init_device == "auto" and cfg.parallel == "fsdp" and d.world > 1)
    hf = build_vision_model(recipe.model, recipe.seed, vocab_size=int(extra.get("vocab_size") or 0),
                            eos_id=int(extra.get("eos_id") or 0), pad_id=extra.get("pad_id"), device="meta")
    with torch.device("meta"):
        module = ContrastiveModule.from_recipe(hf, recipe)
    estimate = estimate_vision_memory(module, cfg, d.world, cfg.micro_batch_size, device_type=d.device.type)
    if available:
        check_fits(estimate, available, source)
    fps = flops_per_sample(hf.config, cfg.objective, recipe.model.projection_dim)
    if not meta:
        module.to_empty(device="cpu")
        module.reset(recipe.seed)
    module = parallelize(module, cfg, d.device, init=lambda _hf: module.reset(recipe.seed))
    return module, fps, estimate


def device_name(device: torch.device) -> str:
    """The accelerator's or CPU's model name, for the model card's hardware line."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        return f"{names[0]} ({len(names)} logical CPUs)" if names else platform.processor() or "cpu"
    except OSError:
        return platform.processor() or "cpu"


def train(recipe: Recipe) -> dict:
    began = time.monotonic()
    cfg = recipe.train
    d = init_distributed(cfg.backend)
    torch.set_num_threads(cfg.threads_per_process or max(1, (os.cpu_count() or 1) // int(
        os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    tokens = Manifest.load(recipe.url("tokens"))  # a samples manifest for image objectives
    image = recipe.modality != "text"
    if not image and tokens.kind == "samples":
        raise RecipeError(f"train.objective {cfg.objective} trains on token shards, but {recipe.url('tokens')} holds "
                          "image samples (re-run the data steps with this recipe)")
    ckpt = CheckpointManager(recipe.url("checkpoints"), cfg.keep_checkpoints,
                             checkpoint_fingerprint(recipe.model.model_dump(), recipe.seed, tokens.fingerprint),
                             keep_every=cfg.keep_every,
                             asynchronous=cfg.async_checkpoint == "on" or (cfg.async_checkpoint == "auto"
                                                                           and d.device.type == "cuda"))
    ckpt.check_foreign()  # before anything expensive
    if image:
        train_data, val_data = image_data(tokens, recipe.seed, recipe.model.seq_len)
    else:
        if cfg.verify_tokens:
            verify_shards(tokens.shards, d.rank, d.world)
        train_data = TokenLoader(shard_refs(tokens.shards, "train"), recipe.model.seq_len, recipe.seed,
                                 epochs=mixture_epochs(tokens.extra), document_masking=cfg.document_masking)
        val_data = SequentialWindows(split_urls(tokens.shards, "val"), recipe.model.seq_len)

    module, fpt, estimate = build_module(recipe, tokens, d)
    core = trained_part(unwrap(module))  # the HF model (+ SimCLR's head): checkpoints hold its keys
    optimizer = build_optimizer(core, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    start = ckpt.restore(core, optimizer, scheduler)
    saved = ckpt.extra(start) if start else {}
    prior_wall = float(saved.get("wall_seconds", 0.0))  # the earlier processes' share of this run's wall-clock
    note = check_resume(saved["trajectory"], cfg, start) if start and "trajectory" in saved else None
    if note and d.rank == 0:
        print(f"[checkpoint] {note}", flush=True)
    guard = StabilityGuard(cfg.stability, cfg.warmup_steps, saved.get("guard"))
    offset = int(saved.get("loader", {}).get("offset", 0))  # batches skipped by rollbacks
    anchor = loader_anchor(saved.get("loader"), (start + offset) * cfg.grad_accum_steps, d.world,
                           cfg.micro_batch_size)
    use_bf16 = cfg.precision == "bf16"

    def autocast():
        return torch.autocast(d.device.type, dtype=torch.bfloat16, enabled=use_bf16)

    peak, peak_source = None, "logged by rank 0"
    if d.rank == 0 or d.device.type == "cuda":  # a CPU probe (2048^2 matmuls, ~0.3 s) only where MFU is logged
        peak, peak_source = peak_flops(d.device, matmul_precision(cfg.precision, cfg.tf32, d.device.type),
                                       threads=torch.get_num_threads(), probe_size=2048)
    per_row = 1 if image else recipe.model.seq_len  # image runs count samples (TrainState.unit), not tokens
    state = TrainState(step=start, max_steps=cfg.max_steps, rank=d.rank, world=d.world, flops_per_token=fpt,
                       tokens_per_step=cfg.micro_batch_size * cfg.grad_accum_steps * per_row * d.world,
                       peak_flops=peak, unit="samples" if image else "tokens")
    log = MetricsLog(recipe.url("train", "metrics.jsonl"), start, d.rank)
    last_save = time.monotonic()

    def save(step: int) -> str:
        nonlocal last_save
        micro_step = (step + offset) * cfg.grad_accum_steps
        loader = {"world": d.world, "micro_batch": cfg.micro_batch_size, "anchor": list(anchor),
                  "micro_step": micro_step, "offset": offset,
                  "samples": TokenLoader.samples_before(micro_step, d.world, cfg.micro_batch_size, anchor)}
        saving = time.monotonic()
        url = ckpt.save(step, core, optimizer, scheduler, {
            "tokens_seen": step * state.tokens_per_step, "loader": loader, "trajectory": trajectory(cfg),
            "guard": guard.state_dict(), "wall_seconds": prior_wall + time.monotonic() - began})
        last_save = time.monotonic()
        state.checkpoint_seconds = last_save - saving
        return url

    def checkpointed(state: TrainState, url: str) -> None:
        for cb in callbacks:
            cb.on_checkpoint(state, url)

    # observers (Prometheus, TensorBoard, progress; rank 0) after Throughput, whose numbers they report
    callbacks: list[Callback] = [Throughput(), log, *observer_callbacks(recipe.observe, recipe.name, state,
                                                                        recipe.url("train")),
                                 Checkpointing(save, cfg.checkpoint_interval, checkpointed)]

    def run_eval() -> None:
        sums = held_out_sums(module, val_data, recipe.evaluate.batch_size, cfg.eval_batches, d, autocast, recipe.seed)
        loss = (sums[0] / sums[1]).item()
        if image:  # in-batch top-1 retrieval of each anchor's positive (the other view, or its caption / image)
            metrics = {"val_loss": loss, "val_accuracy": (sums[2] / sums[1]).item()}
        else:
            metrics = {"val_loss": loss, "val_perplexity": math.exp(min(loss, 50))}
        for cb in callbacks:
            cb.on_eval(state, metrics)

    if d.rank == 0:
        print(f"[train] {sum(p.numel() for p in core.parameters()):,} parameters, {fpt / 1e6:.1f} MFLOP/"
              f"{state.unit[:-1]}, "
              f"peak {peak / 1e12 if peak else 0:.1f} TFLOP/s ({peak_source}), {estimate.describe()}", flush=True)
    stop = StopSignal()
    try:
        if start == 0:
            run_eval()
        module.train()
        step = start
        while step < cfg.max_steps:
            step += 1
            state.step = step
            optimizer.zero_grad(set_to_none=True)
            total = torch.zeros((), device=d.device)
            for micro in range(cfg.grad_accum_steps):
                index = (step + offset - 1) * cfg.grad_accum_steps + micro
                rows = train_data.batch(index, d.rank, d.world, cfg.micro_batch_size, anchor)
                inputs = batch_inputs(rows)  # CPU tensors: the objective moves them (masked LM masks on the CPU)
                with gradient_sync(module, enabled=micro == cfg.grad_accum_steps - 1), autocast():
                    loss = module(*inputs, mask_seed=mask_seed(recipe.seed, index, d.rank))
                (loss / cfg.grad_accum_steps).backward()
                total += loss.detach() / cfg.grad_accum_steps
            grad_norm = clip_grad_norm(module, cfg.grad_clip or float("inf"))
            lr = current_lr(optimizer)  # the learning rate this step uses
            due = bool(cfg.checkpoint_minutes and time.monotonic() - last_save >= cfg.checkpoint_minutes * 60)
            control = torch.stack([total.double(), grad_norm.double().to(d.device),
                                   torch.tensor(float(due), dtype=torch.float64, device=d.device),
                                   torch.tensor(float(stop.received), dtype=torch.float64, device=d.device)])
            if dist.is_initialized():  # one small all-reduce and host sync a step: every rank decides alike
                dist.all_reduce(control)
            loss_mean, norm, due_any, stop_any = control.tolist()
            loss_mean, norm = loss_mean / d.world, norm / d.world
            reason = guard.judge(step, loss_mean, norm) if guard.enabled else None
            if reason:
                guard.record(step, reason)
                ckpt.finish()
                rollback = cfg.stability.action == "rollback" and ckpt.latest() is not None
                for cb in callbacks:
                    cb.on_anomaly(state, {"anomaly": reason, "loss": loss_mean, "grad_norm": norm,
                                          "action": "rollback" if rollback else "skip",
                                          "anomalies": guard.state.anomalies})
                if rollback:
                    restored = ckpt.restore(core, optimizer, scheduler, ckpt.latest())
                    offset += step - restored  # skip the batches that led here
                    step = restored
                    continue
                optimizer.zero_grad(set_to_none=True)
                with warnings.catch_warnings():  # a skipped step still moves the schedule: the step is spent
                    warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*before.*optimizer.step")
                    scheduler.step()
            else:
                ckpt.wait_staged()  # an asynchronous save has copied the weights it saves
                optimizer.step()
                scheduler.step()
            metrics: dict[str, float] = {}
            if (step % cfg.log_interval == 0 or step == cfg.max_steps) and not reason:  # skipped: anomaly row
                metrics = {"loss": loss_mean, "lr": lr, "grad_norm": norm,
                           "peak_memory_gb": peak_memory_gb(d.device)}
                if guard.state.anomalies:
                    metrics["anomalies"] = guard.state.anomalies
            state.save_requested = due_any > 0 or stop_any > 0
            for cb in callbacks:
                cb.on_step(state, metrics)
            if stop_any:
                ckpt.finish()
                if d.rank == 0:
                    print(f"[train] SIGTERM: checkpoint at step {step} written, exiting", flush=True)
                raise Preempted(PREEMPTED_EXIT)
            if step % cfg.eval_interval == 0 or step == cfg.max_steps:
                run_eval()
        ckpt.close()
        for cb in callbacks:
            cb.on_end(state)
    except Preempted:
        log.close()
        if dist.is_initialized():
            _KEEP_ALIVE.append((module, optimizer))
            dist.destroy_process_group()
        raise
    finally:
        stop.restore()
    consumed = TokenLoader.samples_before((state.step + offset) * cfg.grad_accum_steps, d.world,
                                          cfg.micro_batch_size, anchor)
    by_source = train_data.sources_of(0, consumed)
    trained = {} if image else {k: v * recipe.model.seq_len for k, v in by_source.items()}
    summary = {"step": state.step, "history": log.rows, "world_size": d.world, "device": d.device.type,
               "parameters": sum(p.numel() for p in core.parameters()),
               "trained_tokens_by_source": trained, "anomalies": guard.state.anomalies,
               **({"trained_samples_by_source": by_source, "flops_per_sample": fpt} if image
                  else {"flops_per_token": fpt}),
               "peak_flops": peak, "peak_flops_source": peak_source,
               "memory_estimate_gb": estimate.total / 1e9, "device_name": device_name(d.device),
               "wall_seconds": prior_wall + time.monotonic() - began}
    if dist.is_initialized():
        dist.barrier()
        _KEEP_ALIVE.append((module, optimizer))
        dist.destroy_process_group()
    return summary
