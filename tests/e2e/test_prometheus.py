"""A real Prometheus scrapes a short local training run (torchrun, tiny model) and a real Pushgateway; tokens/s,
loss and a data step's pushed count are read back through Prometheus's HTTP API, as Grafana would read them.

Needs Debian's ``prometheus`` and ``prometheus-pushgateway`` (both run on loopback, with a temporary config and
storage). Skipped when either is missing, except with CI=true, where .ci/run installs them and a skip would hide
a broken exporter.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from needs import missing
from synthetic import write_synthetic_run

from pretrain.observe import pushgateway

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PUSHGATEWAY = shutil.which("prometheus-pushgateway") or "/usr/bin/prometheus-pushgateway"
SCRAPE = "250ms"


def _needs(reason: str) -> None:
    missing(reason, ".ci/run installs Debian's prometheus and prometheus-pushgateway")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def wait_ready(url: str, proc: subprocess.Popen, log: Path, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {seconds} s: {log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """Pushgateway and Prometheus on loopback; Prometheus scrapes the Pushgateway and a training port."""
    for binary, package in ((PROMETHEUS, "prometheus"), (PUSHGATEWAY, "prometheus-pushgateway")):
        if not Path(binary).exists():
            _needs(f"{package} is not installed (Debian/Ubuntu: apt-get install {package})")
    tmp = tmp_path_factory.mktemp("prometheus")
    ports = {"prometheus": free_port(), "pushgateway": free_port(), "train": free_port()}
    config = tmp / "prometheus.yml"
    config.write_text(
        f"global:\n  scrape_interval: {SCRAPE}\n  scrape_timeout: {SCRAPE}\n"
        "scrape_configs:\n"
        f"  - job_name: pretrain-train\n    static_configs:\n      - targets: ['127.0.0.1:{ports['train']}']\n"
        "  - job_name: pushgateway\n    honor_labels: true\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{ports['pushgateway']}']\n")
    procs = []
    try:
        for name, cmd, ready in (
                ("pushgateway", [PUSHGATEWAY, f"--web.listen-address=127.0.0.1:{ports['pushgateway']}"],
                 f"http://127.0.0.1:{ports['pushgateway']}/-/ready"),
                ("prometheus", [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
                                f"--web.listen-address=127.0.0.1:{ports['prometheus']}"],
                 f"http://127.0.0.1:{ports['prometheus']}/-/ready")):
            log = tmp / f"{name}.log"
            procs.append(subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=tmp))
            wait_ready(ready, procs[-1], log)
        yield {name: f"http://127.0.0.1:{port}" for name, port in ports.items()} | {"train_port": ports["train"]}
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(timeout=30)


def query(prometheus: str, expr: str) -> list[dict]:
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    answer = get_json(url)
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def test_prometheus_scrapes_training_and_the_pushgateway(servers, tmp_path):
    prom = servers["prometheus"]
    # A data step's counts, pushed as steps.py and the KFP components push them.
    stats = [{"documents_in": 75, "kept": 71, "bytes_in": 1000, "dropped_by_reason": {"min_chars": 3, "c4": 1},
              "bytes_dropped_by_reason": {"min_chars": 144, "c4": 10}}]
    assert pushgateway.push_step(servers["pushgateway"], "obs-e2e", "filter", stats)

    root = tmp_path / "run"
    _, url = write_synthetic_run(str(root), [
        # long enough (a few seconds on a quiet CPU) for several 250 ms scrapes while the loss changes
        "model.seq_len=64", "model.hidden_size=64", "model.num_layers=2", "model.intermediate_size=128",
        "train.micro_batch_size=4", "train.max_steps=400", "train.log_interval=5", "train.warmup_steps=2",
        "train.eval_interval=1000", "train.eval_batches=1", "train.checkpoint_interval=1000",
        f"observe.metrics_port={servers['train_port']}", "observe.metrics_address=127.0.0.1",
        "observe.progress=lines"], docs=16, doc_len=200)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1", "-m",
           "pretrain.train", "--config", url]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert f"Prometheus metrics on http://127.0.0.1:{servers['train_port']}/metrics" in run.stdout
    assert "\r" not in run.stdout and "[train] 400/400 steps (100%)" in run.stdout  # progress as plain lines

    rows = [json.loads(x) for x in (root / "train" / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "loss" in r]
    # The run has ended: its last scraped samples are still in Prometheus's storage.
    selector = '{job="pretrain-train", run="tiny", step="train", rank="0"}'
    results = {}
    for metric in ("pretrain_train_tokens_per_second", "pretrain_train_loss", "pretrain_train_step"):
        found = query(prom, f"last_over_time({metric}{selector}[10m])")
        assert len(found) == 1, (metric, found)
        results[metric] = float(found[0]["value"][1])
    history = query(prom, f"pretrain_train_loss{selector}[10m]")
    scraped = [float(v) for _, v in history[0]["values"]]
    assert len(set(scraped)) >= 2  # the loss was followed while the run went on, not read once at the end
    # every loss Prometheus saw is one the run logged (metrics.jsonl rounds to 6 decimals)
    assert all(min(abs(v - r["loss"]) for r in logged) < 1e-5 for v in scraped), (scraped, logged)
    # the last scrape lands somewhere in the run's second half (the process exits right after its last step)
    steps = query(prom, f"pretrain_train_step{selector}[10m]")
    seen = [float(v) for _, v in steps[0]["values"]]
    assert seen == sorted(seen) and logged[-1]["step"] / 2 <= results["pretrain_train_step"] <= logged[-1]["step"]
    tps = results["pretrain_train_tokens_per_second"]
    assert tps > 0 and min(abs(tps - r["tokens_per_second"]) / r["tokens_per_second"] for r in logged) < 1e-6

    # The pushed count, read back through Prometheus (which scrapes the Pushgateway) and the Pushgateway itself.
    expr = 'pretrain_data_dropped_documents_total{run="obs-e2e", step="filter", rule="min_chars"}'
    deadline = time.monotonic() + 30
    while not (found := query(prom, expr)) and time.monotonic() < deadline:
        time.sleep(0.25)
    assert [float(r["value"][1]) for r in found] == [3.0]
    groups = get_json(f"{servers['pushgateway']}/api/v1/metrics")["data"]
    assert any(g["labels"].get("run") == "obs-e2e" for g in groups)
    # The end of the run: its groups leave the Pushgateway.
    assert pushgateway.delete_run(servers["pushgateway"], "obs-e2e")
    groups = get_json(f"{servers['pushgateway']}/api/v1/metrics")["data"]
    assert not any(g["labels"].get("run") == "obs-e2e" for g in groups)
