"""The notebooks, executed top to bottom with papermill on a real Jupyter kernel, on the session's one tiny run.

Each runs with its papermill parameters as CI passes them (``recipe``, ``run_root``, ``follow=False`` ...); the
assertions compare what the notebook showed with what the run wrote (the ledger, the train manifest), so a notebook
that runs but shows wrong numbers fails. The cluster notebook submits to a local HTTP stand-in for the KFP API.
Needs papermill and ipykernel (the dev extra): skipped without them, except with CI=true.
"""

from __future__ import annotations

import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from needs import missing

from pretrain.manifest import Manifest

pytestmark = pytest.mark.e2e
NOTEBOOKS = Path(__file__).parents[2] / "notebooks"
BUDGET_S = 120  # each takes under a minute on 2 free cores (01, reusing all 43 tasks: 60 s at load 5); a tripwire


def _needs(reason: str) -> None:
    missing(reason, "the dev extra has papermill and ipykernel")


def _papermill() -> Any:
    try:
        import ipykernel  # noqa: F401
        import papermill
    except ImportError as err:
        _needs(f"{err.name} is not installed")
    return papermill


def execute(name: str, out_dir: Path, cwd: Path | None = None, **parameters: Any) -> tuple[Any, float]:
    """Run ``notebooks/<name>`` with papermill on the python3 kernel; (the executed notebook, seconds)."""
    import nbformat

    papermill = _papermill()

    out = out_dir / name
    start = time.monotonic()
    papermill.execute_notebook(str(NOTEBOOKS / name), str(out), parameters=parameters, cwd=str(cwd or out_dir),
                               kernel_name="python3", progress_bar=False, log_output=False)
    return nbformat.read(out, as_version=4), time.monotonic() - start


def cell(nb, needle: str):
    """The one code cell whose source contains ``needle``."""
    found = [c for c in nb.cells if c.cell_type == "code" and needle in c.source]
    assert len(found) == 1, (needle, len(found))
    return found[0]


def text(c) -> str:
    """Everything a cell showed: streams, plain text and HTML."""
    parts = []
    for o in c.outputs:
        if o.output_type == "stream":
            parts.append(o.text)
        for kind in ("text/plain", "text/html"):
            if kind in o.get("data", {}):
                parts.append(o.data[kind])
    return "\n".join(parts)


def table(c):
    """The DataFrame a cell displayed, read back from its HTML."""
    import pandas as pd

    html = next(o.data["text/html"] for o in c.outputs if "text/html" in o.get("data", {}))
    found = pd.read_html(io.StringIO(html), index_col=0)[0]
    if found.columns.nlevels > 1:  # a named index is a second header row
        found.columns = found.columns.get_level_values(0)
    return found


def test_quickstart_reuses_the_run_and_plots_the_funnel_and_loss_that_the_run_wrote(tiny_run, tmp_path):
    root, _, _ = tiny_run
    weights = root / "model" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    nb, seconds = execute("01-quickstart.ipynb", tmp_path, recipe=str(root.parent.parent / "mixed.yaml"),
                          run_root=str(root))
    assert seconds < BUDGET_S, f"01-quickstart took {seconds:.0f} s"
    shown = text(cell(nb, "run_pipeline(run)"))
    assert "Task 'evaluate' finished with status SUCCESS" in shown and "[train]" not in shown  # reused
    assert weights.stat().st_mtime_ns == before
    train = Manifest.load(str(root / "train"))
    summary = table(cell(nb, "run_pipeline(run)"))
    assert float(summary.loc["final val loss", "value"]) == pytest.approx(train.stats["final_val_loss"])
    ledger = Manifest.load(str(root / "dedup")).extra["ledger"]["sources"]
    funnel = table(cell(nb, "nb.funnel_table(facts)"))
    assert set(funnel.columns) == set(ledger)
    for source, row in ledger.items():
        assert funnel.loc["read", source] == row["read"]
        assert funnel.loc["ingested", source] == row["written"]
        assert funnel.loc["kept by filters", source] == row["kept"]
        assert funnel.loc["after dedup", source] == row["deduplicated"]
    assert 'id="plot-funnel-documents"' in text(cell(nb, "nb.funnel_chart(facts)"))
    loss = text(cell(nb, "keys=[\"loss\"]"))
    assert 'id="plot-loss"' in loss and "finished: step 300 of 300" in loss
    completions = [line for line in text(cell(nb, "if generate:")).splitlines() if line[:1] in ("'", '"')]
    assert len(completions) == 3 and all(len(c) > 12 for c in completions)  # repr() of each prompt's completion


def test_data_explorer_finds_the_run_from_notebooks_folder_and_its_tables_match_the_ledger(tiny_run, tmp_path):
    """As a new user opens it: the kernel starts in <repo>/notebooks, no run_root, the run is <repo>/runs/tiny."""
    root, _, _ = tiny_run
    repo = tmp_path / "repo"
    (repo / "notebooks").mkdir(parents=True)
    (repo / "runs").mkdir()
    (repo / "runs" / "tiny").symlink_to(root, target_is_directory=True)
    nb, seconds = execute("02-data-explorer.ipynb", tmp_path, cwd=repo / "notebooks", recipe="tiny")
    assert seconds < BUDGET_S, f"02-data-explorer took {seconds:.0f} s"
    first = cell(nb, "nb.open_run(recipe, run_root)")
    assert f"run root: {repo / 'runs' / 'tiny'}" in text(first)
    ledger = Manifest.load(str(root / "dedup")).extra["ledger"]["sources"]
    shown = table(first)
    for source, row in ledger.items():
        assert (shown.loc[source, "read"], shown.loc[source, "kept"], shown.loc[source, "deduplicated"]) == (
            row["read"], row["kept"], row["deduplicated"])
    per_source = table(cell(nb, "groupby(\"source\").agg"))
    assert {s: per_source.loc[s, "documents"] for s in ledger} == {s: r["deduplicated"] for s, r in ledger.items()}
    drops = table(cell(nb, "nb.drops_by_rule(dropped)"))
    for source, row in ledger.items():
        for rule, n in row["dropped"].items():
            assert drops.loc[rule, source] == n, (source, rule)
        assert drops[source].sum() == sum(row["dropped"].values()) if source in drops else not row["dropped"]
    examples = table(cell(nb, "nb.drop_examples(dropped)"))
    assert examples["value"].notna().all() and set(examples["reason"]) == set(drops.index)
    samples = (Manifest.load(str(root / "dedup")).extra["clusters"] or {}).get("samples") or []
    assert text(cell(nb, "nb.clusters_side_by_side")).count("<h4>cluster") == min(5, len(samples)) > 0
    trial = table(cell(nb, "nb.rule_change_summary(trial)"))  # filter.min_chars 200 -> 400 only adds drops
    assert (trial["dropped_after"] >= trial["dropped_before"]).all() and trial["newly_kept"].sum() == 0
    assert trial["newly_dropped"].sum() > 0


def test_the_rule_trial_judges_as_the_run_did(tiny_run):
    """With no change, the trial's verdicts on every ingested document are the run's own: the same documents
    dropped, by the same rule, for the same value."""
    from pretrain import notebook

    root, _, _ = tiny_run
    run = notebook.open_run(run_root=str(root))
    trial = notebook.try_rule_change(run, [], sample=100_000)
    assert not trial["changed"].any()
    dropped = notebook.documents(run, "dropped", columns=["id", "reason", "value"])
    judged = trial[trial["before"] != "kept"]
    assert dict(zip(judged["id"], zip(judged["before"], judged["before_value"], strict=True), strict=True)) == dict(
        zip(dropped["id"], zip(dropped["reason"], dropped["value"], strict=True), strict=True))
    assert len(trial) == sum(r["written"] for r in Manifest.load(str(root / "dedup")).extra["ledger"]
                             ["sources"].values())


def test_training_monitor_draws_the_runs_curves_and_compares_it(tiny_run, tmp_path):
    root, _, _ = tiny_run
    nb, seconds = execute("03-training-monitor.ipynb", tmp_path, recipe="tiny", run_root=str(root), follow=False)
    assert seconds < BUDGET_S, f"03-training-monitor took {seconds:.0f} s"
    curves = text(cell(nb, "nb.follow(root"))
    for plot in ("plot-loss", "plot-tokens-per-second", "plot-mfu", "plot-lr"):
        assert f'id="{plot}"' in curves, plot
    assert "finished: step 300 of 300" in curves
    history = [json.loads(line) for line in (root / "train" / "metrics.jsonl").read_text().splitlines()]
    last = table(cell(nb, "history[[c for c"))
    assert last["loss"].iloc[-1] == pytest.approx([r["loss"] for r in history if "loss" in r][-1])
    train = Manifest.load(str(root / "train"))
    compared = table(cell(nb, "nb.compare_runs("))
    assert compared.loc["final val loss"].iloc[0] == f"{train.stats['final_val_loss']:.4f}"
    assert compared.loc["steps"].iloc[0] == "300"
    assert 'id="plot-compare-val-loss"' in text(cell(nb, "nb.charts(*plots)"))


class KfpStandIn:
    """The KFP v2beta1 endpoints a submit calls (healthz, experiments, runs), on loopback; records requests."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = self.path.split("?")[0]
                outer.requests.append({"method": self.command, "path": path, "body": json.loads(raw) if raw else None})
                status, answer = outer.route(self.command, path, outer.requests[-1]["body"])
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @staticmethod
    def route(method: str, path: str, body: Any) -> tuple[int, Any]:
        if (method, path) == ("GET", "/apis/v2beta1/healthz"):
            return 200, {"multi_user": False}
        if (method, path) == ("GET", "/apis/v2beta1/experiments"):
            return 200, {}
        if (method, path) == ("POST", "/apis/v2beta1/experiments"):
            return 200, {**body, "experiment_id": "exp-1"}
        if (method, path) == ("POST", "/apis/v2beta1/runs"):
            return 200, {**body, "run_id": "run-0001", "state": "PENDING"}
        return 404, {"error": f"no route {method} {path}", "code": 5}


def test_cluster_notebook_compiles_and_submits_to_a_kfp_stand_in(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))  # no cluster check: nothing to check against
    for key in ("KUBERNETES_SERVICE_HOST", "KF_PIPELINES_ENDPOINT", "KF_PIPELINES_DEFAULT_EXPERIMENT_NAME"):
        monkeypatch.delenv(key, raising=False)
    api = KfpStandIn()
    try:
        nb, seconds = execute("04-cluster.ipynb", tmp_path, recipe="tiny", run_root="s3://pretrain/runs/tiny",
                              host=api.url, follow=False)
    finally:
        api.httpd.shutdown()
        api.httpd.server_close()
    assert seconds < BUDGET_S, f"04-cluster took {seconds:.0f} s"
    compiled = text(cell(nb, "compile_pipeline(run, package, image)"))
    assert "comp-train" in compiled and "images:" in compiled
    assert "KFP run: run-0001" in text(cell(nb, "submit(run, host"))
    runs = [r for r in api.requests if (r["method"], r["path"]) == ("POST", "/apis/v2beta1/runs")]
    assert len(runs) == 1
    sent = json.loads(runs[0]["body"]["runtime_config"]["parameters"]["recipe"])
    assert sent["name"] == "tiny" and sent["run_root"] == "s3://pretrain/runs/tiny"
    spec = runs[0]["body"]["pipeline_spec"]["pipeline_spec"]
    assert spec["pipelineInfo"]["name"] == "pretrain" and {"comp-train", "comp-evaluate"} <= set(spec["components"])
    assert "follow or download is off" in text(cell(nb, "if follow and download"))
    assert not any(r["path"].startswith("/apis/v2beta1/runs/") for r in api.requests)  # not followed


def test_a_missing_run_root_stops_at_the_first_cell_with_one_line_naming_it(tmp_path):
    papermill = _papermill()
    missing = tmp_path / "runs" / "nowhere"
    with pytest.raises(papermill.PapermillExecutionError) as err:
        execute("03-training-monitor.ipynb", tmp_path, recipe="tiny", run_root=str(missing), follow=False)
    assert err.value.ename == "RunRootError"
    assert str(missing) in err.value.evalue and "no such folder" in err.value.evalue
    assert err.value.exec_count is not None and err.value.cell_index <= 3  # the first cell after the parameters
