"""A real S3 server (moto) in its own process on loopback: what tests and benchmarks talk to over HTTP."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import IO


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(log: IO | int = subprocess.DEVNULL, timeout: float = 60) -> tuple[subprocess.Popen, str]:
    """Start moto's server on a free port; return the process and its endpoint URL once it answers HTTP."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=1).close()
            return proc, endpoint
        except urllib.error.HTTPError:
            return proc, endpoint  # it answers HTTP: up
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"moto S3 server did not start on {endpoint}") from None
            time.sleep(0.1)
