"""Observability without a Prometheus server: metric names and labels, the /metrics server, the training
callbacks, pushes over real HTTP, the Grafana dashboard against the registry, progress output, TensorBoard."""

from __future__ import annotations

import http.server
import io
import json
import re
import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from pretrain.config import RecipeError, load_recipe
from pretrain.observe import prometheus, pushgateway
from pretrain.observe.callbacks import PrometheusExporter, StepProgress, observer_callbacks
from pretrain.observe.progress import Progress, resolve_mode
from pretrain.train.callbacks import TrainState

DASHBOARD = Path(__file__).resolve().parents[2] / "manifests" / "base" / "grafana" / "pretrain-dashboard.json"
SCRAPE_LABELS = {"namespace", "pod", "training_job", "instance", "job", "container"}  # added by the scrape
# Filter stats as two partitions' manifests hold them (shape of runs/quickstart/filtered/*.manifest.json).
FILTER_STATS = [
    {"documents_in": 75, "kept": 71, "dropped": 4, "bytes_in": 1278905,
     "dropped_by_reason": {"min_chars": 1, "fineweb.min_line_punct_ratio": 3},
     "bytes_dropped_by_reason": {"min_chars": 144, "fineweb.min_line_punct_ratio": 4809}},
    {"documents_in": 10, "kept": 8, "dropped": 2, "bytes_in": 5000,
     "dropped_by_reason": {"min_chars": 2}, "bytes_dropped_by_reason": {"min_chars": 300}},
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def state(step: int = 0, rank: int = 0) -> TrainState:
    return TrainState(step=step, max_steps=100, tokens_per_step=4096, rank=rank, flops_per_token=1e6,
                      peak_flops=1e12, world=2)


def all_names() -> dict[str, set[str]]:
    names = prometheus.sample_names(prometheus.training_exposition())
    for name, labels in prometheus.sample_names(pushgateway.data_exposition()).items():
        names.setdefault(name, set()).update(labels)
    return names


def test_names_follow_prometheus_conventions_and_labels_are_bounded():
    names = all_names()
    assert len(names) >= 25
    for name, labels in names.items():
        assert re.fullmatch(r"pretrain_[a-z][a-z0-9_]*", name), name
        assert not re.search(r"_(gb|mb|ms|percent|per_cent)(_|$)", name), f"{name}: base units only"
        assert labels <= {"run", "step", "rank", "rule", "kind", "split"}, (name, labels)
    training = prometheus.sample_names(prometheus.training_exposition())
    assert all({"run", "step", "rank"} <= labels for labels in training.values())
    # counters end in _total; the units named in the issue are there with their suffixes
    assert {"pretrain_train_tokens_total", "pretrain_train_checkpoints_total", "pretrain_train_tokens_per_second",
            "pretrain_train_mfu_ratio", "pretrain_train_step_seconds", "pretrain_train_peak_memory_bytes",
            "pretrain_train_checkpoint_duration_seconds", "pretrain_train_loss", "pretrain_train_learning_rate",
            "pretrain_train_grad_norm", "pretrain_data_dropped_documents_total",
            "pretrain_data_duplicate_documents_total", "pretrain_data_bytes_in_total"} <= set(names)


def test_dashboard_queries_only_exported_metrics_and_their_labels():
    """Every metric name in every panel's (and variable's) expression is one the code exports, with labels it
    has or the scrape adds: built from the registries, no hand-written list."""
    names = all_names()
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    used: set[str] = set()
    for panel in dashboard["panels"]:
        found = {m for t in panel["targets"] for m in re.findall(r"\bpretrain_\w+", t["expr"])}
        assert found, f"panel {panel['title']!r} queries no pretrain metric"
    for expr in exprs:
        for metric, selector in re.findall(r"\b(pretrain_\w+)(\{[^}]*\})?", expr):
            assert metric in names, f"{metric} (in {expr}) is not exported; exported: {sorted(names)}"
            used.add(metric)
            labels = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", selector))
            assert labels <= names[metric] | SCRAPE_LABELS, (metric, labels - names[metric])
        for by in re.findall(r"by \(([^)]*)\)", expr):
            grouped = {x.strip() for x in by.split(",")}
            metrics = re.findall(r"\b(pretrain_\w+)", expr)
            allowed = set.union(*(names[m] for m in metrics)) | SCRAPE_LABELS
            assert grouped <= allowed, (expr, grouped - allowed)
    # the issue's training metrics and the data steps' counts all have a panel
    assert {"pretrain_train_tokens_per_second", "pretrain_train_loss", "pretrain_train_learning_rate",
            "pretrain_train_grad_norm", "pretrain_train_mfu_ratio", "pretrain_train_step_seconds",
            "pretrain_train_peak_memory_bytes", "pretrain_train_checkpoint_duration_seconds",
            "pretrain_data_documents_in_total", "pretrain_data_dropped_documents_total",
            "pretrain_data_duplicate_documents_total"} <= used


def test_metrics_server_serves_the_registry_and_a_taken_port_only_warns(capsys):
    metrics = prometheus.TrainingMetrics.create("exp1", rank=0)
    metrics.update({"loss": 2.5, "peak_memory_gb": 1.5, "mfu": 0.42, "lr": True, "tokens_per_second": "fast"})
    port = free_port()
    server = prometheus.MetricsServer.start(metrics.registry, port, "127.0.0.1")
    assert server is not None and server.port == port
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        # a second exporter on the same port: a clear warning, no exception
        assert prometheus.MetricsServer.start(metrics.registry, port, "127.0.0.1") is None
    finally:
        server.stop()
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port}" in err and "already in use" in err and "training goes on" in err
    samples = {(n, frozenset(labels.items())): v for n, labels, v in _samples(text)}
    key = frozenset({"run": "exp1", "step": "train", "rank": "0"}.items())
    assert samples[("pretrain_train_loss", key)] == 2.5
    assert samples[("pretrain_train_peak_memory_bytes", key)] == 1.5e9  # GB -> bytes
    assert samples[("pretrain_train_mfu_ratio", key)] == 0.42
    assert ("pretrain_train_learning_rate", key) not in samples  # a bool is not a number here
    assert ("pretrain_train_tokens_per_second", key) not in samples


def _samples(text: str):
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            yield s.name, s.labels, s.value


def test_exporter_callback_follows_steps_evals_checkpoints_and_anomalies(capsys):
    st = state(step=10)
    cb = PrometheusExporter("exp2", st, port=None)
    assert cb.server is None
    assert (cb.metrics.get("pretrain_train_step"), cb.metrics.get("pretrain_train_max_steps")) == (10, 100)
    assert cb.metrics.get("pretrain_train_loss") is None  # no loss before a logged step (not a loss of 0)
    assert "pretrain_train_loss{" not in cb.metrics.text()
    for step in (11, 12):
        st.step = step
        cb.on_step(st, {} if step == 11 else {"loss": 3.25, "grad_norm": 0.75, "tokens_per_second": 1234.5})
    cb.on_eval(st, {"val_loss": 3.5, "val_perplexity": 33.1})
    st.checkpoint_seconds = 1.25
    cb.on_checkpoint(st, "/tmp/ckpt")
    cb.on_anomaly(st, {"anomaly": "spike", "loss": 99.0, "anomalies": 1})
    values = {n: v for n, labels, v in _samples(cb.metrics.text()) if labels.get("run") == "exp2"}
    assert values["pretrain_train_step"] == 12
    assert values["pretrain_train_tokens_total"] == 2 * 4096
    assert values["pretrain_train_loss"] == 3.25  # not the anomaly's 99
    assert values["pretrain_train_grad_norm"] == 0.75 and values["pretrain_train_tokens_per_second"] == 1234.5
    assert values["pretrain_train_validation_loss"] == 3.5
    assert values["pretrain_train_checkpoint_duration_seconds"] == 1.25
    assert values["pretrain_train_checkpoints_total"] == 1 and values["pretrain_train_anomalies"] == 1


def test_an_image_run_counts_samples_not_tokens():
    st = state(step=1)
    st.unit, st.tokens_per_step = "samples", 128  # image objectives: the loop's per-step count is samples
    cb = PrometheusExporter("img", st, port=None)
    cb.on_step(st, {"loss": 2.0, "samples_per_second": 456.0, "samples_per_second_per_device": 228.0})
    values = {n: v for n, labels, v in _samples(cb.metrics.text()) if labels.get("run") == "img"}
    assert values["pretrain_train_samples_total"] == 128 and values["pretrain_train_tokens_total"] == 0
    assert values["pretrain_train_samples_per_second"] == 456.0
    assert values["pretrain_train_samples_per_second_per_device"] == 228.0
    assert "pretrain_train_tokens_per_second" not in values  # never a token rate it does not have


def test_only_rank_zero_observes_and_a_taken_port_leaves_the_rest_working(capsys):
    recipe = load_recipe("tiny", ["observe.metrics_address=127.0.0.1", "observe.progress=lines"])
    assert observer_callbacks(recipe.observe, recipe.name, state(rank=1), "/tmp/x") == []
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = recipe.observe.model_copy(update={"metrics_port": port})
        callbacks = observer_callbacks(cfg, recipe.name, state(), "/tmp/x")
    assert [type(c).__name__ for c in callbacks] == ["PrometheusExporter", "StepProgress"]
    assert callbacks[0].server is None and "already in use" in capsys.readouterr().err


def test_observe_section_defaults_and_bad_values():
    recipe = load_recipe("tiny")
    assert recipe.observe.metrics_port == 9464 and recipe.observe.pushgateway is None
    assert recipe.observe.progress == "auto" and recipe.observe.tensorboard is False
    assert load_recipe("tiny", ["observe.metrics_port=null"]).observe.metrics_port is None
    for override, key in (("observe.metrics_port=70000", "observe.metrics_port"),
                          ("observe.pushgateway=pushgateway:9091", "observe.pushgateway"),
                          ("observe.progress=fancy", "observe.progress"), ("observe.port=1", "observe.port")):
        with pytest.raises(RecipeError, match=re.escape(key)):
            load_recipe("tiny", [override])


def test_data_step_counts_sum_partitions():
    counts = pushgateway.step_counts("filter", FILTER_STATS)
    assert counts["pretrain_data_documents_in"] == {"": 85.0}
    assert counts["pretrain_data_documents_out"] == {"": 79.0}
    assert counts["pretrain_data_dropped_documents"] == {"min_chars": 3.0, "fineweb.min_line_punct_ratio": 3.0}
    assert counts["pretrain_data_dropped_bytes"] == {"min_chars": 444.0, "fineweb.min_line_punct_ratio": 4809.0}
    dedup = pushgateway.step_counts("dedup", [{"documents_in": 571, "documents_out": 547, "exact_duplicates": 4,
                                               "fuzzy_duplicates": 20}])
    assert dedup["pretrain_data_duplicate_documents"] == {"exact": 4.0, "fuzzy": 20.0}
    tokens = pushgateway.step_counts("tokenize", [{"train_tokens": 3000, "val_tokens": 100, "train_documents": 9,
                                                   "val_documents": 1, "train_bytes": 6000, "val_bytes": 200}])
    assert tokens["pretrain_data_tokens"] == {"train": 3000.0, "val": 100.0}
    assert tokens["pretrain_data_documents_in"] == {"": 10.0} and tokens["pretrain_data_bytes_out"] == {"": 6200.0}
    with pytest.raises(ValueError, match="unknown data step"):
        pushgateway.step_counts("ingest", [])


class _Recorder(http.server.BaseHTTPRequestHandler):
    """A stand-in Pushgateway that records each request (method, path, body) and answers 200."""

    requests: list[tuple[str, str, str]]

    def _record(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        self.server.requests.append((self.command, self.path, body))  # type: ignore[attr-defined]
        self.send_response(200)
        self.end_headers()

    do_PUT = do_POST = do_DELETE = _record

    def log_message(self, *args) -> None: ...


@pytest.fixture
def recorder():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    server.requests = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_push_puts_one_group_per_step_and_the_run_end_deletes_them(recorder):
    from pretrain import steps

    url = f"http://127.0.0.1:{recorder.server_address[1]}"
    assert pushgateway.push_step(url, "exp3", "filter", FILTER_STATS)
    method, path, body = recorder.requests[0]
    assert (method, path) == ("PUT", "/metrics/job/pretrain/run/exp3/step/filter")
    values = {(n, labels.get("rule")): v for n, labels, v in _samples(body)}
    assert values[("pretrain_data_dropped_documents_total", "min_chars")] == 3.0
    assert values[("pretrain_data_documents_in_total", None)] == 85.0
    # steps' run scope: only the outermost call ends the run, and deletes each data step's group
    recipe = load_recipe("tiny", [f"observe.pushgateway={url}"])
    recorder.requests.clear()
    with steps._run(recipe):
        with steps._run(recipe):
            pass
        assert recorder.requests == []
    assert [(m, p) for m, p, _ in recorder.requests] == [
        ("DELETE", f"/metrics/job/pretrain/run/tiny/step/{s}") for s in pushgateway.DATA_STEPS]


def test_an_unreachable_pushgateway_warns_and_the_step_goes_on(capsys):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    began = time.monotonic()
    assert pushgateway.push_step(url, "exp4", "dedup", [{"documents_in": 1}]) is False
    assert pushgateway.delete_run(url, "exp4") is False
    assert time.monotonic() - began < 5
    err = capsys.readouterr().err
    assert f"could not push the dedup step's metrics to the Pushgateway {url}" in err and "goes on" in err
    assert "could not delete run 'exp4'" in err
    assert pushgateway.push_step(None, "exp4", "dedup", []) is False  # none configured: nothing, silently
    assert capsys.readouterr().err == ""


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_lines_without_carriage_returns_when_not_a_terminal():
    out = io.StringIO()
    assert resolve_mode("auto", out) == "lines"
    progress = Progress("train", 10, interval=0.0, stream=out)
    for _ in range(4):
        progress.update()
        time.sleep(0.01)
    progress.set(10, "loss 2.5")
    progress.close("loss 2.5")
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert lines[0].startswith("[train] 1/10 steps (10%), ") and "steps/s" in lines[0] and "left" in lines[0]
    assert lines[-1].startswith("[train] 10/10 steps (100%)") and lines[-1].endswith("loss 2.5")
    assert len(lines) == 5  # one a call; close adds no duplicate of the last
    quiet = io.StringIO()
    with Progress("data", 3, interval=3600, unit="partition", stream=quiet) as slow:
        for _ in range(3):
            slow.update()
    assert quiet.getvalue().splitlines() == [quiet.getvalue().strip()]  # only the final line
    assert quiet.getvalue().startswith("[data] 3/3 partitions (100%)")


def test_progress_bar_at_a_terminal_and_off():
    tty = _Terminal()
    assert resolve_mode("auto", tty) == "bar"
    st = state(step=0)
    cb = StepProgress(st, "auto", 30.0, stream=tty)
    for step in range(1, 6):
        st.step = step
        cb.on_step(st, {"loss": 3.0} if step == 5 else {})
    cb.on_end(st)
    text = tty.getvalue()
    assert "\r" in text and "5/100" in text and "loss 3" in text  # tqdm redraws in place
    off = _Terminal()
    with Progress("x", 3, mode="off", stream=off) as p:
        p.update(3)
    assert off.getvalue() == ""


def test_tensorboard_event_files_hold_the_logged_scalars(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from pretrain.observe.callbacks import TensorBoardLog

    st = state(step=0)
    cb = TensorBoardLog(str(tmp_path / "tb"))
    cb.on_eval(st, {"val_loss": 5.0})
    for step, loss in ((10, 4.0), (20, 3.0)):
        st.step = step
        cb.on_step(st, {"loss": loss, "lr": 0.001, "mfu": 0.1})
    cb.on_end(st)
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(10, 4.0), (20, 3.0)]
    assert [(e.step, e.value) for e in events.Scalars("eval/loss")] == [(0, 5.0)]
    assert {"train/lr", "perf/mfu"} <= set(events.Tags()["scalars"])


def test_the_data_steps_push_their_counts_and_the_run_end_deletes_them(recorder, tmp_path):
    """steps.data on a small crawl: filter (all partitions together), dedup and tokenize each PUT their group, with
    the numbers of their manifests; the end of the run DELETEs every group."""
    from pretrain import steps
    from pretrain.data.samples import web
    from pretrain.manifest import Manifest

    crawl = tmp_path / "crawl"
    for i in range(2):
        web.write_warc(crawl / f"part-{i}.warc.gz", 20, start=100 * i)
    url = f"http://127.0.0.1:{recorder.server_address[1]}"
    recipe = load_recipe("examples/warc", [f"sources.0.uri={crawl}", f"run_root={tmp_path / 'run'}",
                                           f"observe.pushgateway={url}", "observe.progress=lines"])
    tokens = steps.data(recipe, workers=1)
    group = f"/metrics/job/pretrain/run/{recipe.name}/step/"
    assert [(m, p) for m, p, _ in recorder.requests] == [
        *(("PUT", group + s) for s in pushgateway.DATA_STEPS), *(("DELETE", group + s) for s in pushgateway.DATA_STEPS)]
    pushed = {p.rsplit("/", 1)[1]: {(n, tuple(sorted(labels.items()))): v for n, labels, v in _samples(body)}
              for m, p, body in recorder.requests if m == "PUT"}
    run, filt = ("run", recipe.name), ("step", "filter")
    dedup = Manifest.load(recipe.url("dedup"))
    assert pushed["filter"][("pretrain_data_documents_out_total", (run, filt))] == dedup.stats["documents_in"]
    dropped = {dict(k[1])["rule"]: v for k, v in pushed["filter"].items()
               if k[0] == "pretrain_data_dropped_documents_total"}
    assert pushed["filter"][("pretrain_data_documents_in_total", (run, filt))] == dedup.stats["documents_in"] + sum(
        dropped.values()) > 0
    assert pushed["dedup"][("pretrain_data_documents_out_total", (run, ("step", "dedup")))] == \
        dedup.stats["documents_out"]
    assert pushed["tokenize"][("pretrain_data_tokens_total", (run, ("split", "train"), ("step", "tokenize")))] == \
        tokens.stats["train_tokens"] > 0
