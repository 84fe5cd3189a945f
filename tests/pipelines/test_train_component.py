"""The train step's launcher dispatch, its fingerprint, and the exit handler's clean-up decision."""

from __future__ import annotations

import types

import pytest

from pretrain.config import load_recipe
from pretrain.train import step

CLUSTER = ["run_root=s3://bucket/runs/tiny", "train.launcher=pytorchjob"]


@pytest.fixture
def launch_calls(monkeypatch):
    """The cluster launcher's two entry points, recording their calls (the launcher has its own tests)."""
    import pretrain.launch.cluster as cluster

    calls = []

    class Stop(Exception):
        pass

    def run_cluster_job(recipe, run_id, **kwargs):
        calls.append(("run", recipe.train.launcher, run_id))
        raise Stop

    def delete_cluster_job(recipe, run_id, **kwargs):
        calls.append(("delete", recipe.train.launcher, run_id))
        return True

    monkeypatch.setattr(cluster, "run_cluster_job", run_cluster_job)
    monkeypatch.setattr(cluster, "delete_cluster_job", delete_cluster_job)
    return types.SimpleNamespace(calls=calls, Stop=Stop)


def test_a_cluster_launcher_creates_the_job_named_after_the_run(launch_calls, monkeypatch):
    written = []
    monkeypatch.setattr(step, "write_recipe", lambda recipe: written.append(recipe.name) or "s3://b/recipe.yaml")
    monkeypatch.setattr(step, "reuse", lambda root, fp: None)
    tokens = types.SimpleNamespace(fingerprint="tok")
    with pytest.raises(launch_calls.Stop):
        step.train_step(load_recipe("tiny", CLUSTER), tokens, run_id="3f2a-run")
    assert launch_calls.calls == [("run", "pytorchjob", "3f2a-run")]
    assert written == ["tiny"]  # the pods read the resolved recipe from the run root


def test_where_training_runs_is_not_part_of_its_fingerprint(monkeypatch):
    seen = []
    monkeypatch.setattr(step, "reuse", lambda root, fp: seen.append(fp) or "reused")
    tokens = types.SimpleNamespace(fingerprint="tok")
    for overrides in (["run_root=s3://bucket/runs/tiny"], CLUSTER,
                      ["run_root=s3://bucket/runs/tiny", "train.launcher=trainjob", "train.resources.cpu=30"],
                      ["run_root=s3://bucket/runs/tiny", "train.max_steps=999"]):
        assert step.train_step(load_recipe("tiny", overrides), tokens) == "reused"
    assert seen[0] == seen[1] == seen[2] != seen[3]


@pytest.mark.parametrize(("launcher", "state", "deleted"), [
    ("local", "FAILED", False), ("pytorchjob", "SUCCEEDED", False), ("pytorchjob", "FAILED", True),
    ("trainjob", "CANCELED", True)])
def test_clean_up_deletes_the_job_of_a_run_that_did_not_succeed(launch_calls, launcher, state, deleted):
    overrides = ["run_root=s3://bucket/runs/tiny", f"train.launcher={launcher}"]
    said = step.cleanup_step(load_recipe("tiny", overrides), "run-7", state)
    assert launch_calls.calls == ([("delete", launcher, "run-7")] if deleted else [])
    assert said.startswith("clean-up:")
