"""The training loop's observability callbacks: Prometheus, TensorBoard and progress, all on rank 0 only.

``observer_callbacks`` builds the ones a recipe's ``observe`` section asks for; none of them can fail a run.
"""

from __future__ import annotations

import sys
from typing import Any

from pretrain import storage
from pretrain.config import ObserveConfig
from pretrain.observe import warn
from pretrain.observe.progress import Progress
from pretrain.train.callbacks import Callback, TrainState


class PrometheusExporter(Callback):
    """Keeps the training gauges current and serves them on ``/metrics`` (when the port is free)."""

    def __init__(self, run: str, state: TrainState, port: int | None, address: str = "0.0.0.0") -> None:
        from pretrain.observe.prometheus import MetricsServer, TrainingMetrics

        self.metrics = TrainingMetrics.create(run, rank=state.rank)
        self.metrics.set("pretrain_train_step", state.step)
        self.metrics.set("pretrain_train_max_steps", state.max_steps)
        self.metrics.set("pretrain_train_world_size", state.world)
        self.server = MetricsServer.start(self.metrics.registry, port, address) if port else None
        if self.server is not None:
            print(f"[observe] Prometheus metrics on http://{address}:{self.server.port}/metrics", flush=True)

    def on_step(self, state: TrainState, metrics: dict[str, Any]) -> None:
        self.metrics.set("pretrain_train_step", state.step)
        self.metrics.counters[f"pretrain_train_{state.unit}"].inc(state.tokens_per_step)  # tokens, or samples
        if metrics:
            self.metrics.update(metrics)

    def on_eval(self, state: TrainState, metrics: dict[str, Any]) -> None:
        self.metrics.update(metrics)

    def on_checkpoint(self, state: TrainState, url: str) -> None:
        self.metrics.counters["pretrain_train_checkpoints"].inc()
        if state.checkpoint_seconds is not None:
            self.metrics.set("pretrain_train_checkpoint_duration_seconds", state.checkpoint_seconds)

    def on_anomaly(self, state: TrainState, info: dict[str, Any]) -> None:
        self.metrics.update({"anomalies": info.get("anomalies")})  # not the bad loss: it is not a training loss

    def on_end(self, state: TrainState) -> None:
        self.metrics.set("pretrain_train_step", state.step)


class TensorBoardLog(Callback):
    """Scalars of every logged step, eval and anomaly into TensorBoard event files."""

    def __init__(self, url: str) -> None:
        from pretrain.observe.tensorboard import EventWriter

        self.writer = EventWriter.open(url)

    def on_step(self, state: TrainState, metrics: dict[str, Any]) -> None:
        if self.writer and metrics:
            self.writer.scalars(state.step, metrics)

    def on_eval(self, state: TrainState, metrics: dict[str, Any]) -> None:
        if self.writer:
            self.writer.scalars(state.step, metrics)
            self.writer.sync()

    def on_checkpoint(self, state: TrainState, url: str) -> None:
        if self.writer:
            self.writer.sync()

    def on_anomaly(self, state: TrainState, info: dict[str, Any]) -> None:
        if self.writer:
            self.writer.scalars(state.step, {"anomalies": info.get("anomalies")})

    def on_end(self, state: TrainState) -> None:
        if self.writer:
            self.writer.close()


class StepProgress(Callback):
    """Training steps as a bar (terminal) or a line every few seconds (logs), with the last loss."""

    def __init__(self, state: TrainState, mode: Any, interval: float, stream: Any = None) -> None:
        self.progress = Progress("train", state.max_steps, mode=mode, interval=interval, initial=state.step,
                                 stream=stream if stream is not None else sys.stdout)
        self.note = ""

    def on_step(self, state: TrainState, metrics: dict[str, Any]) -> None:
        if "loss" in metrics:
            self.note = f"loss {metrics['loss']:.4g}"
        self.progress.set(state.step, self.note)

    def on_end(self, state: TrainState) -> None:
        self.progress.close(self.note)


def observer_callbacks(cfg: ObserveConfig, run: str, state: TrainState, train_url: str) -> list[Callback]:
    """What ``observe`` asks for, on rank 0 (the other ranks report nothing: rank 0 holds the job-wide numbers)."""
    if state.rank != 0:
        return []
    found: list[Callback] = []
    try:
        found.append(PrometheusExporter(run, state, cfg.metrics_port, cfg.metrics_address))
    except ImportError as err:  # a broken install must not cost the run
        warn(f"Prometheus metrics are off: {err} (the prometheus-client package is a dependency of pretrain)")
    if cfg.tensorboard:
        found.append(TensorBoardLog(storage.join(train_url, "tensorboard")))
    if cfg.progress != "off":
        found.append(StepProgress(state, cfg.progress, cfg.progress_seconds))
    return found
