"""TensorBoard event files of a training run (the optional ``tensorboard`` extra).

Written by rank 0 with ``torch.utils.tensorboard`` under ``<run root>/train/tensorboard``. An s3:// run root
gets a local directory whose files are uploaded at each eval, checkpoint and at the end, as metrics.jsonl is.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from pretrain import storage
from pretrain.observe import warn

# the loop's metrics keys -> TensorBoard tags (grouped into sections by the part before the slash)
TAGS = {"loss": "train/loss", "val_loss": "eval/loss", "val_perplexity": "eval/perplexity", "lr": "train/lr",
        "grad_norm": "train/grad_norm", "tokens_per_second": "perf/tokens_per_second",
        "tokens_per_second_per_device": "perf/tokens_per_second_per_device", "mfu": "perf/mfu",
        "samples_per_second": "perf/samples_per_second", "val_accuracy": "eval/accuracy",
        "samples_per_second_per_device": "perf/samples_per_second_per_device",
        "step_seconds": "perf/step_seconds", "peak_memory_gb": "perf/peak_memory_gb",
        "anomalies": "train/anomalies"}


def available() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


class EventWriter:
    """Scalars per step into TensorBoard event files at ``url`` (a local path or s3:// URL)."""

    def __init__(self, url: str) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.url = url
        self.local = tempfile.mkdtemp(prefix="pretrain-tb-") if storage.is_remote(url) else url
        Path(self.local).mkdir(parents=True, exist_ok=True)
        self._writer = SummaryWriter(log_dir=self.local)

    @classmethod
    def open(cls, url: str) -> EventWriter | None:
        """None (after a warning) when the tensorboard package is missing."""
        if not available():
            warn("observe.tensorboard is on but the tensorboard package is not installed "
                 "(pip install 'pretrain[tensorboard]'); training goes on without event files")
            return None
        return cls(url)

    def scalars(self, step: int, metrics: dict[str, Any]) -> None:
        for key, value in metrics.items():
            if key in TAGS and isinstance(value, (int, float)) and not isinstance(value, bool):
                self._writer.add_scalar(TAGS[key], float(value), global_step=step)

    def sync(self) -> None:
        """Flush; with an s3:// URL, upload the event files."""
        self._writer.flush()
        if storage.is_remote(self.url):
            for name in os.listdir(self.local):
                with open(os.path.join(self.local, name), "rb") as f:
                    storage.write_bytes(storage.join(self.url, name), f.read())

    def close(self) -> None:
        self._writer.close()
        self.sync()
