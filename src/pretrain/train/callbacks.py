"""Features of the training loop as callbacks on a few events: step, eval, checkpoint, end."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

from pretrain import storage


@dataclass
class TrainState:
    step: int
    max_steps: int
    tokens_per_step: int
    rank: int
    flops_per_token: float
    peak_flops: float | None
    history: list[dict[str, Any]] = field(default_factory=list)


class Callback:
    def on_step(self, state: TrainState, metrics: dict[str, Any]) -> None: ...
    def on_eval(self, state: TrainState, metrics: dict[str, Any]) -> None: ...
    def on_checkpoint(self, state: TrainState, url: str) -> None: ...
    def on_end(self, state: TrainState) -> None: ...


class Throughput(Callback):
    """Adds tokens/s and MFU (model FLOPs utilization, when the peak is known) to step metrics."""

    def __init__(self) -> None:
        self._last = time.perf_counter()

    def on_step(self, state: TrainState, metrics: dict[str, Any]) -> None:
        now = time.perf_counter()
        elapsed, self._last = now - self._last, now
        tps = state.tokens_per_step / max(elapsed, 1e-9)
        metrics["tokens_per_second"] = tps
        if state.peak_flops:
            metrics["mfu"] = tps * state.flops_per_token / state.peak_flops


class MetricsLog(Callback):
    """Rank 0 keeps ``train/metrics.jsonl`` (one JSON per log line, rewritten atomically) and prints."""

    def __init__(self, url: str, log_interval: int, resume_step: int) -> None:
        self.url = url
        self.log_interval = log_interval
        self.rows: list[dict[str, Any]] = []
        if storage.exists(url):
            old = [json.loads(line) for line in storage.read_text(url).splitlines() if line.strip()]
            self.rows = [r for r in old if r["step"] <= resume_step]

    def _write(self) -> None:
        storage.write_text(self.url, "".join(json.dumps(r) + "\n" for r in self.rows))

    def on_step(self, state: TrainState, metrics: dict[str, Any]) -> None:
        if state.rank == 0 and (state.step % self.log_interval == 0 or state.step == state.max_steps):
            row = {"step": state.step, **{k: _round(v) for k, v in metrics.items()}}
            self.rows.append(row)
            print("[train] " + " ".join(f"{k}={v}" for k, v in row.items()), flush=True)
            self._write()

    def on_eval(self, state: TrainState, metrics: dict[str, Any]) -> None:
        if state.rank == 0:
            row = {"step": state.step, **{k: _round(v) for k, v in metrics.items()}}
            self.rows.append(row)
            print("[eval] " + " ".join(f"{k}={v}" for k, v in row.items()), flush=True)
            self._write()


def _round(v: Any) -> Any:
    return round(v, 6) if isinstance(v, float) and math.isfinite(v) else v


class Checkpointing(Callback):
    def __init__(self, save, interval: int) -> None:
        self.save, self.interval = save, interval

    def on_step(self, state: TrainState, metrics: dict[str, Any]) -> None:
        if state.step % self.interval == 0 or state.step == state.max_steps:
            self.save(state.step)
