"""Observability: Prometheus metrics (served by training, pushed by data steps), TensorBoard, progress.

Every metric is named ``pretrain_*`` with Prometheus's unit suffixes; labels are the run, the step's name and
the rank (plus bounded ones such as a filter rule), never anything that grows with the data. Nothing here may
stop a run: an exporter that cannot start or a Pushgateway that does not answer prints a warning and steps aside.
The training callbacks live in ``pretrain.observe.callbacks``; the rest imports nothing from training.
"""

from __future__ import annotations

import sys


def warn(message: str) -> None:
    """One line on stderr, prefixed so it can be found in a pod's log; the run goes on."""
    print(f"pretrain: warning: {message}", file=sys.stderr, flush=True)
