from __future__ import annotations

import subprocess
import sys

import pytest

from pretrain import cli
from pretrain.config import RecipeError, load_recipe


@pytest.mark.parametrize("command", [[], ["run"], ["compile"], ["submit"], ["data"]])
def test_help_explains_each_command(command):
    proc = subprocess.run([sys.executable, "-m", "pretrain.cli", *command, "--help"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0
    assert "usage: pretrain" in proc.stdout
    if command in (["run"], ["compile"]):
        assert "key=value" in proc.stdout and "quickstart" in proc.stdout


def test_a_bare_override_means_the_quickstart():
    args = cli.build_parser().parse_args(["run", "train.max_steps=5"])
    assert cli._split_recipe(args) == (None, ["train.max_steps=5"])


def test_submit_refuses_a_local_run_root():
    with pytest.raises(RecipeError, match="run_root"):
        cli.submit(load_recipe("tiny", ["run_root=/tmp/x"]), "http://h", "exp")


def test_job_prints_the_training_job_and_writes_the_recipe_it_reads(s3, capsys):
    """`pretrain job RECIPE | kubectl apply -f -`: one valid custom resource on stdout, and the resolved recipe at
    the run root where the job's pods read it (--config)."""
    import yaml
    from crd_schema import validate_custom

    from pretrain import storage

    root = f"{s3}/runs/j"
    assert cli.main(["job", "tiny", "train.launcher=trainjob", f"run_root={root}", "--run-id", "r1"]) == 0
    out, err = capsys.readouterr()
    job = yaml.safe_load(out)
    validate_custom(job)
    assert job["kind"] == "TrainJob" and job["spec"]["trainer"]["numNodes"] == 1
    assert f"{root}/recipe.yaml" in job["spec"]["trainer"]["command"]
    written = yaml.safe_load(storage.read_text(f"{root}/recipe.yaml"))
    assert written["train"]["launcher"] == "trainjob" and written["run_root"] == root
    assert "no token data" in err  # the data steps have not run under this root
    # the same run id names the same job; --no-write-recipe leaves the run root alone
    storage.remove(f"{root}/recipe.yaml")
    assert cli.main(["job", "tiny", "train.launcher=pytorchjob", f"run_root={root}", "--run-id", "r1",
                     "--no-write-recipe"]) == 0
    again = yaml.safe_load(capsys.readouterr().out)
    validate_custom(again)
    assert again["kind"] == "PyTorchJob" and again["metadata"]["name"] == job["metadata"]["name"]
    assert not storage.exists(f"{root}/recipe.yaml")


def test_job_refuses_the_local_launcher_and_a_local_run_root(capsys):
    assert cli.main(["job", "tiny", "--no-write-recipe"]) == 2
    assert "train.launcher is local" in capsys.readouterr().err
    assert cli.main(["job", "tiny", "train.launcher=pytorchjob", "--no-write-recipe"]) == 2
    assert "cannot reach a local run root" in capsys.readouterr().err


def test_missing_s3_credentials_are_a_clear_error_not_a_traceback(monkeypatch, tmp_path, capsys):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    code = cli.main(["job", "tiny", "run_root=s3://bucket/runs/x", "train.launcher=pytorchjob"])
    err = capsys.readouterr().err
    assert code == 2 and "S3 credentials" in err and "AWS_ACCESS_KEY_ID" in err and "Traceback" not in err
