"""The learning-rate schedule, and what a resumed run may change about its training trajectory.

Step indices are 0-based (the first optimizer step has index 0). Each phase ends at its target:

- warmup: index ``i < warmup_steps`` gets ``(i + 1) / warmup_steps``, never 0, and the last warmup step is at
  the peak (1);
- ``cosine``: from the end of warmup, cosine down to ``min_lr_ratio``, which the last step (index
  ``max_steps - 1``) reaches;
- ``wsd`` (warmup-stable-decay): 1 until the decay phase, the last ``decay_fraction`` of ``max_steps``, then
  ``1 - sqrt`` down to ``min_lr_ratio`` at the last step. 1-sqrt rather than linear: in Hägele et al. 2024
  ("Scaling Laws and Compute-Optimal Training Beyond Fixed Training Durations") it beat the linear cooldown and
  matched cosine.

Past ``max_steps`` the factor stays at ``min_lr_ratio``.
"""

from __future__ import annotations

import json
import math
from typing import Any

import torch

from pretrain.config import TrainConfig

# What changes the training trajectory; the loop stores it in each checkpoint and checks it on resume.
TRAJECTORY_KEYS = ("optimizer", "lr", "muon_lr", "muon_momentum", "betas", "weight_decay", "schedule",
                   "warmup_steps", "min_lr_ratio", "decay_fraction", "max_steps", "micro_batch_size",
                   "grad_accum_steps", "grad_clip", "objective", "mask_probability", "z_loss", "decay_embeddings",
                   "embedding_lr", "head_lr")
# wsd: these only move where the decay starts, harmless while no step has decayed yet under either value.
_DECAY_START_KEYS = frozenset({"max_steps", "decay_fraction"})
# These change the batch per optimizer step, not the LR: a resume may change them (the loader continues the
# sample stream with no sample repeated or skipped, as after a world-size change); the LR is not rescaled.
_BATCH_KEYS = frozenset({"micro_batch_size", "grad_accum_steps"})


def decay_start(cfg: TrainConfig) -> int:
    """The index of the first step below the peak after warmup: the end of warmup for cosine, the start of the
    last ``decay_fraction`` of ``max_steps`` for wsd (never inside warmup)."""
    if cfg.schedule == "cosine":
        return cfg.warmup_steps
    return max(cfg.warmup_steps, cfg.max_steps - round(cfg.decay_fraction * cfg.max_steps))


def lr_factor(step_index: int, cfg: TrainConfig) -> float:
    """The multiplier of each group's base LR at 0-based optimizer step ``step_index``."""
    if step_index < cfg.warmup_steps:
        return (step_index + 1) / cfg.warmup_steps
    start = decay_start(cfg)
    if step_index < start:
        return 1.0
    progress = min(1.0, (step_index + 1 - start) / max(1, cfg.max_steps - start))
    shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if cfg.schedule == "cosine" else 1.0 - math.sqrt(progress)
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * shape


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """``lr_factor`` times each group's own base LR (``initial_lr``). The LR a step uses is the group's LR before
    that step's ``scheduler.step()``: step s (1-based) runs at ``lr_factor(s - 1)``.

    The factor is a plain closure on purpose: ``LambdaLR.state_dict`` does not save functions, so a resumed run
    follows its current config (which ``check_resume`` has vetted), not the one in the checkpoint."""

    def factor(step_index: int) -> float:
        return lr_factor(step_index, cfg)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The LR of the first (AdamW) group now: the LR the next ``optimizer.step()`` uses."""
    return float(optimizer.param_groups[0]["lr"])


def trajectory(cfg: TrainConfig) -> dict[str, Any]:
    """The settings that change the training trajectory, JSON-ready (stored in each checkpoint)."""
    return _plain({key: getattr(cfg, key) for key in TRAJECTORY_KEYS})


def check_resume(saved: dict[str, Any], cfg: TrainConfig, step: int) -> str | None:
    """Resuming at ``step`` (steps done) a run whose checkpoint stored ``saved = trajectory(old cfg)``.

    Returns None when nothing changed, or a note when what changed may continue: with ``schedule: wsd``,
    ``max_steps`` / ``decay_fraction`` while ``step`` is before the decay phase under both the old and the new
    values (the stable phase is extended or shortened); ``micro_batch_size`` / ``grad_accum_steps`` (the batch
    per step changes, the LR schedule does not). Anything else raises ValueError naming each change, so the LR
    never jumps silently. Keys missing from ``saved`` (older checkpoints) are not compared."""
    now = trajectory(cfg)
    changed = {k: (saved[k], now[k]) for k in TRAJECTORY_KEYS if k in saved and _plain(saved[k]) != now[k]}
    if not changed:
        return None
    notes: list[str] = []
    refused: list[str] = []
    moved = _DECAY_START_KEYS & changed.keys()
    if moved:
        old = cfg.model_copy(update={k: saved[k] for k in moved})
        old_start, new_start = decay_start(old), decay_start(cfg)
        if saved.get("schedule", cfg.schedule) == cfg.schedule == "wsd" and step <= min(old_start, new_start):
            notes.append(f"schedule wsd, resuming at step {step} in the stable phase: the decay now starts after "
                         f"step {new_start} (was {old_start})")
        else:
            why = ""
            if saved.get("schedule", cfg.schedule) == cfg.schedule == "wsd":
                why = f" (wsd: step {step} is past the decay start, step {old_start} before, {new_start} now)"
            elif cfg.schedule == "cosine":
                why = " (cosine: it sets the LR of every step after warmup)"
            refused += [f"train.{k}: {_show(changed[k][0])} -> {_show(changed[k][1])}{why}" for k in sorted(moved)]
    for key in sorted(_BATCH_KEYS & changed.keys()):
        notes.append(f"train.{key} {_show(changed[key][0])} -> {_show(changed[key][1])}: the batch per step changes "
                     "(the sample stream continues; the LR schedule is kept, not rescaled)")
    refused += [f"train.{k}: {_show(a)} -> {_show(b)}" for k, (a, b) in sorted(changed.items())
                if k not in _DECAY_START_KEYS | _BATCH_KEYS]
    if refused:
        raise ValueError(
            f"cannot resume at step {step}: the checkpoint was trained with other settings:\n  "
            + "\n  ".join(refused)
            + "\nRestore the old values to continue this run, or give it a new run root to start over; to keep "
              "training this model with the new settings, export it and start a run with model.init_from=<the "
              "exported model> (continued pre-training re-warms the LR).")
    return "; ".join(notes)


def _plain(value: Any) -> Any:
    """JSON round trip, so tuples and lists (betas) compare equal to what a checkpoint's JSON gives back."""
    return json.loads(json.dumps(value))


def _show(value: Any) -> str:
    return json.dumps(value)
