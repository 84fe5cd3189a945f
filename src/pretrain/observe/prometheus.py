"""Training metrics for Prometheus, served on ``/metrics`` by rank 0.

Each training run gets its own ``CollectorRegistry`` (not the process-wide default), so what is served is
exactly what is declared here, and tests build the same registry the trainer serves. Gauges hold the value at
the last logged step: Prometheus samples them, and the run's own ``metrics.jsonl`` keeps every logged step.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.exposition import generate_latest, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from pretrain.observe import warn

LABELS = ("run", "step", "rank")  # step: the pipeline step's name ("train"), not the optimizer step

# name -> (help, the loop's metrics key or None, factor to the metric's unit)
GAUGES: dict[str, tuple[str, str | None, float]] = {
    "pretrain_train_step": ("Last optimizer step finished.", None, 1.0),
    "pretrain_train_max_steps": ("Optimizer steps the run is to train.", None, 1.0),
    "pretrain_train_world_size": ("Training processes (ranks).", None, 1.0),
    "pretrain_train_loss": ("Training loss (mean over ranks) at the last logged step.", "loss", 1.0),
    "pretrain_train_validation_loss": ("Held-out loss at the last evaluation.", "val_loss", 1.0),
    "pretrain_train_learning_rate": ("Learning rate of the last logged step.", "lr", 1.0),
    "pretrain_train_grad_norm": ("Gradient norm before clipping at the last logged step.", "grad_norm", 1.0),
    "pretrain_train_tokens_per_second": ("Training tokens per second, all ranks together.", "tokens_per_second",
                                         1.0),
    "pretrain_train_tokens_per_second_per_device": ("Training tokens per second per device.",
                                                    "tokens_per_second_per_device", 1.0),
    "pretrain_train_samples_per_second": ("Training samples per second, all ranks together (image objectives).",
                                          "samples_per_second", 1.0),
    "pretrain_train_samples_per_second_per_device": ("Training samples per second per device (image objectives).",
                                                     "samples_per_second_per_device", 1.0),
    "pretrain_train_mfu_ratio": ("Model FLOPs utilization per device, a fraction of its peak.", "mfu", 1.0),
    "pretrain_train_step_seconds": ("Mean wall time of one optimizer step since the last logged step.",
                                    "step_seconds", 1.0),
    "pretrain_train_peak_memory_bytes": ("Peak memory of rank 0 (accelerator, else resident set size).",
                                         "peak_memory_gb", 1e9),
    "pretrain_train_checkpoint_duration_seconds": ("Time the training loop spent in the last checkpoint save "
                                                   "(an asynchronous save: the staging only).", None, 1.0),
    "pretrain_train_anomalies": ("Skipped or rolled-back steps so far (stability guard).", "anomalies", 1.0),
}
COUNTERS: dict[str, str] = {
    "pretrain_train_tokens": "Training tokens processed by this process (since it started); 0 for image objectives.",
    "pretrain_train_samples": "Training samples (images) processed by this process (image objectives).",
    "pretrain_train_checkpoints": "Checkpoints saved by this process.",
}


@dataclass
class TrainingMetrics:
    """The training gauges and counters of one run on one registry, with their label values bound.

    A gauge appears only once it has a value: before the first logged step there is no loss, not a loss of 0.
    """

    registry: CollectorRegistry
    families: dict[str, Any]
    values: tuple[str, ...]
    counters: dict[str, Any]

    @classmethod
    def create(cls, run: str, rank: int = 0, step: str = "train") -> TrainingMetrics:
        registry = CollectorRegistry(auto_describe=True)
        values = (run, step, str(rank))
        families = {name: Gauge(name, doc, LABELS, registry=registry) for name, (doc, _, _) in GAUGES.items()}
        counters = {name: Counter(name, doc, LABELS, registry=registry).labels(*values)
                    for name, doc in COUNTERS.items()}
        return cls(registry, families, values, counters)

    def set(self, name: str, value: float) -> None:
        self.families[name].labels(*self.values).set(value)

    def get(self, name: str) -> float | None:
        """A gauge's value, None while it has none."""
        for metric in self.families[name].collect():
            for sample in metric.samples:
                return sample.value
        return None

    def update(self, metrics: dict[str, Any]) -> None:
        """Set every gauge whose key is in the loop's metrics (a logged step's, an eval's, an anomaly's)."""
        for name, (_, key, factor) in GAUGES.items():
            value = metrics.get(key) if key else None
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.set(name, float(value) * factor)

    def text(self) -> str:
        return generate_latest(self.registry).decode()


class MetricsServer:
    """``/metrics`` of one registry over HTTP on a daemon thread; None from ``start`` when the port is taken."""

    def __init__(self, server: Any, thread: Any, port: int) -> None:
        self._server, self._thread, self.port = server, thread, port

    @classmethod
    def start(cls, registry: CollectorRegistry, port: int, address: str = "0.0.0.0") -> MetricsServer | None:
        try:
            server, thread = start_http_server(port, addr=address, registry=registry)
        except OSError as err:
            why = ("the port is already in use (another run or exporter on this machine? set observe.metrics_port "
                   "to a free port, or null to turn it off)" if err.errno == errno.EADDRINUSE else str(err))
            warn(f"Prometheus metrics not served on {address}:{port}: {why}; training goes on without /metrics")
            return None
        return cls(server, thread, server.server_address[1])

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def training_exposition() -> str:
    """The text a trainer serves, every metric with one sample (the dashboard test checks names against it)."""
    metrics = TrainingMetrics.create("example")
    for name in GAUGES:
        metrics.set(name, 1.0)
    for counter in metrics.counters.values():
        counter.inc()
    return metrics.text()


def sample_names(exposition: str) -> dict[str, set[str]]:
    """Every sample name in a Prometheus text exposition (``_total``, ``_created`` included) -> its labels."""
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names
