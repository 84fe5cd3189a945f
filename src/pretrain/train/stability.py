"""Judging each step before its update: non-finite loss or gradient, or a loss spike, is an anomaly.

The loop skips an anomalous step (no optimizer update) or rolls back to the last checkpoint and skips
the batches that led to it, as the recipe says; more than ``max_anomalies`` stops the run with a clear
message instead of burning its budget. The guard's state travels in checkpoints so a resumed run judges
exactly as the uninterrupted one would.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from pretrain.config import StabilityConfig

EMA_DECAY = 0.95  # the running mean a spike is measured against covers the last ~20 steps
MIN_HISTORY = 10  # steps of history before a spike can be called


class Diverged(RuntimeError):
    """Too many anomalous steps: the run stops rather than keep spending compute."""


@dataclass
class GuardState:
    mean: float | None = None  # running mean of the good steps' loss
    good_steps: int = 0
    anomalies: int = 0
    last: str = ""


class StabilityGuard:
    def __init__(self, cfg: StabilityConfig, warmup_steps: int, state: dict | None = None) -> None:
        self.cfg = cfg
        self.warmup_steps = warmup_steps
        self.state = GuardState(**state) if state else GuardState()

    @property
    def enabled(self) -> bool:
        return self.cfg.action != "off"

    def judge(self, step: int, loss: float, grad_norm: float) -> str | None:
        """Why this step must not update the model, or None; a good step updates the running mean."""
        s = self.state
        if not math.isfinite(loss):
            reason = f"non-finite loss {loss}"
        elif not math.isfinite(grad_norm):
            reason = f"non-finite gradient norm {grad_norm}"
        elif (self.cfg.spike_factor and s.mean is not None and step > self.warmup_steps
              and s.good_steps >= MIN_HISTORY and loss > self.cfg.spike_factor * s.mean):
            reason = f"loss spike {loss:.4g} > {self.cfg.spike_factor} x running mean {s.mean:.4g}"
        else:
            s.mean = loss if s.mean is None else EMA_DECAY * s.mean + (1 - EMA_DECAY) * loss
            s.good_steps += 1
            return None
        return reason

    def record(self, step: int, reason: str) -> None:
        """Count an anomaly; raise ``Diverged`` once there are more than the recipe allows."""
        self.state.anomalies += 1
        self.state.last = f"step {step}: {reason}"
        if self.state.anomalies > self.cfg.max_anomalies:
            raise Diverged(f"training diverged: {self.state.anomalies} anomalous steps (train.stability."
                           f"max_anomalies={self.cfg.max_anomalies}), the last at {self.state.last}. Lower train.lr, "
                           f"raise train.warmup_steps or set train.grad_clip, then resume from the last checkpoint.")

    def state_dict(self) -> dict:
        return asdict(self.state)
