"""Features of the training loop as callbacks on a few events: step, eval, checkpoint, end."""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pretrain import storage
from pretrain.model.flops import mfu


@dataclass
class TrainState:
    step: int
    max_steps: int
    tokens_per_step: int
    rank: int
    flops_per_token: float
    peak_flops: float | None
    world: int = 1
    save_requested: bool = False  # by time (train.checkpoint_minutes) or SIGTERM, agreed by every rank
    checkpoint_seconds: float | None = None  # the last save's time in the loop (observe: its duration metric)
    history: list[dict[str, Any]] = field(default_factory=list)
    # what tokens_per_step and flops_per_token count: "tokens" (text), or "samples" (image objectives: images, or
    # image-caption pairs, per step; FLOPs per sample), which names the throughput metrics
    unit: str = "tokens"


class Callback:
    def on_step(self, state: TrainState, metrics: dict[str, Any]) -> None: ...
    def on_eval(self, state: TrainState, metrics: dict[str, Any]) -> None: ...
    def on_checkpoint(self, state: TrainState, url: str) -> None: ...
    def on_anomaly(self, state: TrainState, info: dict[str, Any]) -> None: ...
    def on_end(self, state: TrainState) -> None: ...


class Throughput(Callback):
    """Adds tokens/s (global and per device) and MFU to logged steps; image runs log samples/s instead
    (``TrainState.unit``), never a token count they do not have.

    MFU is per device on both sides: the model FLOP/s one device delivers (global tokens/s / world x
    FLOPs per token) over that device's peak for the precision used.

    Measured over all steps since the last logged one: the loop syncs with the device only when it
    logs, so shorter spans would time the queueing of GPU work, not the work.
    """

    def __init__(self) -> None:
        self._restart()

    def _restart(self, *_: Any) -> None:
        self._since, self._steps = time.perf_counter(), 0  # evals and checkpoints are not training time

    on_eval = on_checkpoint = _restart

    def on_step(self, state: TrainState, metrics: dict[str, Any]) -> None:
        self._steps += 1
        if not metrics:
            return
        elapsed = time.perf_counter() - self._since
        tps = state.tokens_per_step * self._steps / max(elapsed, 1e-9)
        per_device = tps / state.world
        metrics[f"{state.unit}_per_second"] = tps
        metrics[f"{state.unit}_per_second_per_device"] = per_device
        metrics["step_seconds"] = elapsed / self._steps
        if state.peak_flops:
            metrics["mfu"] = mfu(per_device, state.flops_per_token, state.peak_flops)
        self._restart()


class MetricsLog(Callback):
    """Rank 0 keeps ``train/metrics.jsonl``, one JSON object per log line, and prints each.

    Lines are appended to a local file (the file itself when the run root is local) and a remote
    copy is uploaded at each eval, checkpoint and at the end, so logging costs no round trip per step.
    On resume, lines past the resumed step are dropped; a torn last line is ignored.
    """

    def __init__(self, url: str, resume_step: int, rank: int = 0) -> None:
        self.url = url
        self.rank = rank
        self.rows: list[dict[str, Any]] = []
        if rank != 0:
            return
        if storage.exists(url):
            for line in storage.read_text(url).splitlines():
                with contextlib.suppress(json.JSONDecodeError):
                    row = json.loads(line)
                    if row["step"] <= resume_step:
                        self.rows.append(row)
        if storage.is_remote(url):
            fd, self.local = tempfile.mkstemp(suffix=".jsonl")
            os.close(fd)
        else:
            self.local = url
            Path(url).parent.mkdir(parents=True, exist_ok=True)
        Path(self.local).write_text("".join(json.dumps(r) + "\n" for r in self.rows))
        self._file = open(self.local, "a")  # noqa: SIM115  (open for the whole run, closed in on_end)

    def _append(self, tag: str, state: TrainState, metrics: dict[str, Any]) -> None:
        row = {"step": state.step, **{k: _round(v) for k, v in metrics.items()}}
        self.rows.append(row)
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        print(f"[{tag}] " + " ".join(f"{k}={v}" for k, v in row.items()), flush=True)

    def sync(self) -> None:
        if self.rank == 0 and storage.is_remote(self.url):
            storage.write_text(self.url, Path(self.local).read_text())

    def on_step(self, state: TrainState, metrics: dict[str, Any]) -> None:
        if self.rank == 0 and metrics:  # the loop fills metrics on logging steps only
            self._append("train", state, metrics)

    def on_eval(self, state: TrainState, metrics: dict[str, Any]) -> None:
        if self.rank == 0:
            self._append("eval", state, metrics)
            self.sync()

    def on_checkpoint(self, state: TrainState, url: str) -> None:
        self.sync()

    def on_anomaly(self, state: TrainState, info: dict[str, Any]) -> None:
        if self.rank == 0:
            self._append("anomaly", state, info)

    def on_end(self, state: TrainState) -> None:
        self.close()

    def close(self) -> None:
        if self.rank == 0 and not self._file.closed:
            self._file.close()
            self.sync()


def _round(v: Any) -> Any:
    return round(v, 6) if isinstance(v, float) and math.isfinite(v) else v


class Checkpointing(Callback):
    """Saves every ``interval`` steps, at the end and when asked (time, SIGTERM), then tells the others."""

    def __init__(self, save: Callable[[int], str], interval: int, notify: Callable[[TrainState, str], None]) -> None:
        self.save, self.interval, self.notify = save, interval, notify

    def on_step(self, state: TrainState, metrics: dict[str, Any]) -> None:
        if state.step % self.interval == 0 or state.step == state.max_steps or state.save_requested:
            self.notify(state, self.save(state.step))
