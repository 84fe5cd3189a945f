"""Run the training entry point with torchrun subprocesses on this machine.

One node is a ``--standalone`` torchrun; several nodes are simulated with one torchrun agent per
node meeting at a c10d rendezvous on loopback, exactly as agents on separate machines would.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass


@dataclass(frozen=True)
class LocalJob:
    config_url: str
    nnodes: int = 1
    nproc_per_node: int = 2
    threads_per_process: int | None = None
    module: str = "pretrain.train"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_commands(job: LocalJob, port: int | None = None, run_id: str | None = None) -> list[list[str]]:
    """One torchrun command per simulated node (a pure function, tested without running it)."""
    base = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={job.nproc_per_node}"]
    tail = ["-m", job.module, "--config", job.config_url]
    if job.nnodes == 1:
        return [[*base, "--standalone", "--nnodes=1", *tail]]
    endpoint = f"127.0.0.1:{port or free_port()}"
    rid = run_id or uuid.uuid4().hex[:8]
    return [[*base, f"--nnodes={job.nnodes}", f"--node-rank={n}", "--rdzv-backend=c10d",
             f"--rdzv-endpoint={endpoint}", f"--rdzv-id={rid}", *tail] for n in range(job.nnodes)]


def run(job: LocalJob, poll_seconds: float = 0.5) -> None:
    """Run the job to completion; raise with the exit codes if any node fails.

    When one simulated node fails, the others are stopped at once: on their own they would wait out the
    rendezvous or a collective's timeout (many minutes) for a peer that will never come back."""
    env = dict(os.environ)
    threads = job.threads_per_process or max(1, (os.cpu_count() or 1) // (job.nproc_per_node * job.nnodes))
    env.setdefault("OMP_NUM_THREADS", str(threads))
    env.setdefault("PYTHONUNBUFFERED", "1")
    procs = [subprocess.Popen(cmd, env=env) for cmd in torchrun_commands(job)]
    try:
        while any(p.poll() is None for p in procs):
            if any(p.poll() for p in procs):  # one node failed (non-zero exit code)
                break
            time.sleep(poll_seconds)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    codes = [p.returncode for p in procs]
    if any(codes):
        raise RuntimeError(f"training failed: torchrun exit codes {codes} (see the log above)")
