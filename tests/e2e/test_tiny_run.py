"""The whole DAG, really run through KFP's local runner by the CLI, on the tiny recipe."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pretrain import storage
from pretrain.manifest import Manifest

pytestmark = pytest.mark.e2e


def pretrain(*args: str, cwd: Path, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pretrain.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def test_every_source_format_family_reaches_the_tokens_and_the_ledger_adds_up(tiny_run):
    root, proc, _ = tiny_run
    ledger = Manifest.load(str(root / "dedup")).extra["ledger"]
    assert set(ledger["sources"]) == {"stdlib-code", "pydoc-web", "wiki", "jsonl", "wet"}
    assert ledger["total"]["balanced"]
    for name, row in ledger["sources"].items():
        assert row["deduplicated"] > 0, name
        assert row["read"] == row["written"] + sum(row["skipped"].values())
    assert ledger["sources"]["wiki"]["skipped"].get("redirect", 0) > 0
    assert "wiki: read " in proc.stdout and "= written" in proc.stdout  # the ledger in the run summary
    assert "adds up" in (root / "evaluate" / "report.md").read_text()


def test_whole_dag_runs_in_under_three_minutes(tiny_run):
    root, proc, elapsed = tiny_run
    assert elapsed < 180, f"tiny run took {elapsed:.0f} s"
    log = proc.stdout + proc.stderr
    for color in ("\x1b[95m", "\x1b[92m", "\x1b[0m"):
        log = log.replace(color, "")
    assert "Pipeline 'pretrain' finished with status SUCCESS" in log
    assert "\n  perplexity" in proc.stdout  # the closing summary, not indented by kfp.local
    for step in ("plan", "dedup", "tokens", "train", "model", "evaluate"):
        assert (root / step / "_MANIFEST.json").exists(), step
    assert "perplexity" in proc.stdout and str(root / "evaluate" / "report.html") in proc.stdout
    assert (root / "recipe.yaml").exists()
    report = (root / "evaluate" / "report.html").read_text()
    assert "<svg" in report and "<script src" not in report and "<link" not in report  # self-contained


def test_training_really_learned(tiny_run):
    root, _, _ = tiny_run
    train = Manifest.load(str(root / "train"))
    history = [json.loads(line) for line in (root / "train" / "metrics.jsonl").read_text().splitlines()]
    first_eval = next(r for r in history if "val_loss" in r)
    assert first_eval["step"] == 0
    assert train.stats["final_val_loss"] <= 0.7 * train.stats["initial_val_loss"], train.stats
    evaluation = Manifest.load(str(root / "evaluate"))
    assert evaluation.stats["loss"] <= 0.7 * train.stats["initial_val_loss"]
    assert 0 < evaluation.stats["bits_per_byte"] < 8


def test_evaluation_tasks_card_and_cutoff_come_from_the_run(tiny_run):
    """The run's own cloze task is scored above chance; the card carries the same numbers and the cutoff."""
    import yaml

    root, _, _ = tiny_run
    evaluation = Manifest.load(str(root / "evaluate"))
    task = evaluation.extra["tasks"]["next_line"]
    assert task["items"] >= 50 and task["chance"] == 0.25 and task["harness"] == "lm-eval"
    assert task["accuracy"] > task["chance"] + 0.1, task  # a trained model, not a coin
    report = json.loads((root / "evaluate" / "report.json").read_text())
    by_source = report["metrics"]["by_source"]
    assert {"stdlib-code", "pydoc-web", "wiki"} <= set(by_source)
    for row in by_source.values():
        assert row["tokens"] == 0 or math.isclose(row["perplexity"], math.exp(row["loss"]))
    card = (root / "model" / "README.md").read_text()
    meta = yaml.safe_load(card.split("---\n")[1])
    values = {(r["dataset"]["name"], m["type"]): m["value"] for r in meta["model-index"][0]["results"]
              for m in r["metrics"]}
    assert values[("tiny validation split (all sources)", "loss")] == round(evaluation.stats["loss"], 6)
    assert values[("next_line", "accuracy")] == round(task["accuracy"], 6)
    cutoff = report["data"]["dates"]["knowledge_cutoff"]
    assert cutoff and "Knowledge cutoff" in card and cutoff in card


def test_exported_model_loads_with_transformers_and_generates(tiny_run):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root, _, _ = tiny_run
    model = AutoModelForCausalLM.from_pretrained(root / "model")
    tokenizer = AutoTokenizer.from_pretrained(root / "model")
    assert (root / "model" / "model.safetensors").exists() and (root / "model" / "README.md").exists()
    enc = tokenizer("def main():\n", return_tensors="pt")
    torch.manual_seed(0)
    out = model.generate(**enc, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] == enc["input_ids"].shape[1] + 12
    assert isinstance(tokenizer.decode(out[0]), str)


def test_kfp_outputs_are_small_manifests_metrics_and_reports(tiny_run):
    root, _, _ = tiny_run
    kfp_root = root / "kfp"
    outputs = {p.relative_to(kfp_root).as_posix(): p for p in kfp_root.rglob("*") if p.is_file()}
    manifests = [p for name, p in outputs.items() if name.endswith("/manifest")]
    assert len(manifests) >= 8 and all(p.stat().st_size < 200_000 for p in manifests)
    assert any(name.endswith("evaluate/report") for name in outputs)
    assert "Held-out evaluation" in next(p for n, p in outputs.items() if n.endswith("evaluate/report")).read_text()


def test_rerun_reuses_finished_work(tiny_run):
    root, _, _ = tiny_run
    weights = root / "model" / "model.safetensors"
    before = (weights.stat().st_mtime_ns, Manifest.load(str(root / "tokens")).to_json())
    proc = pretrain("run", str(root.parent.parent / "mixed.yaml"), cwd=root.parent.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[train]" not in proc.stdout + proc.stderr  # training was not launched again
    assert (weights.stat().st_mtime_ns, Manifest.load(str(root / "tokens")).to_json()) == before


def test_interrupted_run_continues_where_it_stopped(tmp_path):
    args = [sys.executable, "-m", "pretrain.cli", "run", "tiny", "train.checkpoint_interval=50"]
    log = (tmp_path / "first-run.log").open("w")  # a file, not a pipe nobody reads, which would block the run
    # SIGINT back to its default in the child: a suite started as a background job (`make test &`) inherits
    # it ignored, and Python then never turns Ctrl-C into KeyboardInterrupt
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    marker = tmp_path / "runs" / "tiny" / "checkpoints" / "step-0000050" / "_COMMITTED"
    deadline = time.monotonic() + 240
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert marker.exists(), "no checkpoint appeared"
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    proc.wait(timeout=120)
    log.close()
    assert proc.returncode != 0
    root = tmp_path / "runs" / "tiny"
    assert not (root / "train" / "_MANIFEST.json").exists()
    ingest_manifest = next((root / "documents").rglob("*.manifest.json"))
    before = ingest_manifest.stat().st_mtime_ns
    again = pretrain("run", "tiny", "train.checkpoint_interval=50", cwd=tmp_path)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "[checkpoint] resumed from" in again.stdout + again.stderr
    assert ingest_manifest.stat().st_mtime_ns == before  # finished data steps were not redone
    assert Manifest.load(str(root / "train")).stats["steps"] == 300


def test_run_root_on_s3(s3, tmp_path):
    run_root = f"{s3}/runs/tiny"
    proc = pretrain("run", "tiny", f"run_root={run_root}", "train.max_steps=30", cwd=tmp_path,
                    env={k: os.environ[k] for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert storage.exists(f"{run_root}/recipe.yaml")
    assert storage.exists(f"{run_root}/checkpoints/step-0000030/_COMMITTED")
    assert storage.exists(f"{run_root}/model/model.safetensors")
    assert Manifest.load(f"{run_root}/evaluate").stats["perplexity"] > 1
    assert not (tmp_path / "runs").exists()  # nothing of the run landed on local disk


@pytest.mark.parametrize(("args", "message"), [
    (["tiny", "train.max_stepz=5"], "train.max_stepz: unknown key"),
    (["tiny", "train.max_steps=lots"], "train.max_steps"),
    (["tiny", "model.seq_len=2"], "model.seq_len"),
    (["tiny", "sources.0.uri=/nonexistent/src"], "sources[0].uri: /nonexistent/src does not exist"),
    (["tiny", "run_root=s3://bucket/x"], "s3://bucket/x: S3 endpoint http://127.0.0.1:9 is unreachable"),
])
def test_bad_recipes_fail_before_any_step(args, message, tmp_path):
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y"}
    proc = pretrain("run", *args, cwd=tmp_path, timeout=60, env=env)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert proc.stderr.count("\n") <= 2  # one message, no traceback
    assert not (tmp_path / "runs").exists()
