"""The notebooks' structure (numbered, a papermill parameters cell, outputs stripped, code that parses) and the
helpers they import (``pretrain.notebook``): finding a run as a user opens a notebook, following a run that trains.
tests/e2e/test_notebooks_run.py executes them on a real kernel."""

from __future__ import annotations

import ast
import json
import re
import threading
import time
from pathlib import Path

import nbformat
import pytest
import yaml

from pretrain import notebook, storage
from pretrain.config import builtin_recipe_path, load_recipe

NOTEBOOKS = sorted((Path(__file__).parents[2] / "notebooks").glob("*.ipynb"))
EXPECTED = ["01-quickstart.ipynb", "02-data-explorer.ipynb", "03-training-monitor.ipynb", "04-cluster.ipynb"]


def test_the_notebooks_are_numbered_in_reading_order():
    assert [p.name for p in NOTEBOOKS] == EXPECTED
    assert all(re.fullmatch(r"\d\d-[a-z-]+\.ipynb", p.name) for p in NOTEBOOKS)


def _parameters(nb) -> dict[str, ast.expr]:
    code = [c for c in nb.cells if c.cell_type == "code"]
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0] is code[0], "one parameters cell, the first code cell"
    tree = ast.parse(tagged[0].source)
    assert all(isinstance(node, ast.Assign) for node in tree.body), "the parameters cell only assigns"
    return {t.id: node.value for node in tree.body for t in node.targets if isinstance(t, ast.Name)}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_valid_stripped_parameterized_and_uses_the_real_api(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    params = _parameters(nb)
    assert {"recipe", "run_root"} <= set(params)
    assert ast.literal_eval(params["run_root"]) is None  # found from the repository, not hard-coded
    assert isinstance(ast.literal_eval(params["recipe"]), str)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    for source in code:
        ast.parse(source)
    joined = "\n".join(code)
    assert "from pretrain" in joined and "runs/quickstart" not in joined
    for c in nb.cells:
        if c.cell_type == "code":
            assert c.outputs == [] and c.execution_count is None, "outputs are stripped in git"
        assert set(c.metadata) <= {"tags"}, c.metadata


def test_long_or_remote_work_has_an_off_switch_for_ci():
    params = {p.name: _parameters(nbformat.read(p, as_version=4)) for p in NOTEBOOKS}
    assert ast.literal_eval(params["03-training-monitor.ipynb"]["follow"]) is True
    assert {"host", "follow", "download"} <= set(params["04-cluster.ipynb"])


# -- finding runs --------------------------------------------------------------------------------------------------
def _recipe(tmp_path: Path, name: str) -> str:
    """A valid recipe file named ``name`` (the tiny recipe renamed), so no real runs/<name> exists anywhere."""
    tree = yaml.safe_load(builtin_recipe_path("tiny").read_text())
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**tree, "name": name}))
    return str(path)


def _repository(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    for folder in ("notebooks", "recipes"):
        (repo / folder).mkdir(parents=True)
    (repo / "pyproject.toml").write_text("[project]\nname = 'pretrain'\n")
    return repo


def test_a_notebook_started_in_notebooks_finds_the_run_make_run_made(tmp_path):
    repo = _repository(tmp_path)
    (repo / "runs" / "tiny").mkdir(parents=True)
    found = notebook.find_run_root(None, "tiny", cwd=repo / "notebooks")
    assert found == str(repo / "runs" / "tiny")
    assert notebook.default_run_root("tiny", cwd=repo / "notebooks") == found
    for typed in ("../runs/tiny", "runs/tiny"):  # relative to the kernel's folder, else to the repository
        assert notebook.find_run_root(typed, cwd=repo / "notebooks") == str(repo / "runs" / "tiny")


def test_a_new_run_goes_to_the_repositorys_runs_folder(tmp_path):
    repo = _repository(tmp_path)
    recipe = _recipe(tmp_path, "nb-fresh-run")
    run = notebook.prepare(recipe, None, ["train.max_steps=7"], cwd=repo / "notebooks")
    assert run.root == str(repo / "runs" / "nb-fresh-run") and run.train.max_steps == 7
    assert notebook.prepare(recipe, "runs/other", cwd=repo / "notebooks").root == str(repo / "runs" / "other")
    assert notebook.prepare(recipe, "s3://bucket/runs/x").root == "s3://bucket/runs/x"


def test_missing_run_roots_are_one_clear_message_naming_the_path(tmp_path):
    with pytest.raises(notebook.RunRootError, match=re.escape(str(tmp_path / "nope")) + ": no such folder"):
        notebook.find_run_root(str(tmp_path / "nope"))
    recipe = _recipe(tmp_path, "nb-never-ran")
    with pytest.raises(notebook.RunRootError) as err:
        notebook.find_run_root(None, recipe, cwd=tmp_path)
    assert "no run of recipe 'nb-never-ran' found" in str(err.value) and "make run" in str(err.value)
    assert str(tmp_path / "runs" / "nb-never-ran") in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(notebook.RunRootError, match=r"no recipe\.json"):
        notebook.open_run(run_root=str(tmp_path / "empty"))


def test_open_run_reads_the_runs_own_recipe_where_the_run_is_now(tmp_path):
    run = load_recipe("tiny", [f"run_root={tmp_path / 'elsewhere'}", "train.max_steps=11"])
    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / "recipe.json").write_text(run.to_json())
    opened = notebook.open_run("quickstart", str(moved))  # the run's recipe, whatever the parameter says
    assert (opened.name, opened.train.max_steps, opened.root) == ("tiny", 11, str(moved))
    assert opened.url("train") == str(moved / "train")


# -- following a run -----------------------------------------------------------------------------------------------
def _start_run(root: Path, max_steps: int = 30) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "recipe.json").write_text(load_recipe("tiny", [f"train.max_steps={max_steps}"]).to_json())
    (root / "train").mkdir()


def _log(root: Path, *rows: dict) -> None:
    with (root / "train" / "metrics.jsonl").open("a") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def _row(step: int) -> dict:
    return {"step": step, "loss": 8.0 - step / 10, "lr": 1e-3, "grad_norm": 0.5, "tokens_per_second": 1000.0 + step,
            "mfu": 0.2}


def test_follow_redraws_while_the_run_trains_and_stops_when_it_ends(tmp_path):
    root = tmp_path / "run"
    _start_run(root)
    _log(root, {"step": 0, "val_loss": 8.5})
    draws: list[tuple[int, str]] = []

    def drawn(rows: int) -> None:  # a slow machine: go on once follow has drawn what is logged so far
        deadline = time.monotonic() + 20
        while not (draws and draws[-1][0] >= rows) and time.monotonic() < deadline:
            time.sleep(0.01)

    def train():
        for rows, step in enumerate(range(10, 31, 10), start=2):
            drawn(rows - 1)
            _log(root, _row(step))
        drawn(4)
        _log(root, {"step": 30, "val_loss": 5.0})
        (root / "train" / "_MANIFEST.json").write_text("{}")

    worker = threading.Thread(target=train)
    worker.start()
    hist = notebook.follow(str(root), interval=0.03, timeout=30,
                           show=lambda h, line: draws.append((0 if h is None else len(h), line)))
    worker.join()
    assert draws[0][1].startswith("training: step 0 of 30")
    assert draws[-1][1] == "finished: step 30 of 30, loss 5.0000, 1,030 tokens/s, MFU 0.200"
    assert len({n for n, _ in draws}) >= 3  # redrawn as rows arrived, not once at the end
    assert list(hist["step"]) == [0, 10, 20, 30] and hist.loc[3, "val_loss"] == 5.0 and hist.loc[3, "loss"] == 5.0
    charts = notebook.training_charts(hist)
    assert [re.search(r'id="([^"]+)"', c).group(1) for c in charts] == [
        "plot-loss", "plot-tokens-per-second", "plot-mfu", "plot-lr", "plot-grad-norm"]
    assert 'data-name="validation"' in charts[0] and 'data-name="training"' in charts[0]


def test_follow_gives_up_at_the_timeout_and_draws_once_when_not_live(tmp_path):
    root = tmp_path / "run"
    _start_run(root)
    draws: list[str] = []
    start = time.monotonic()
    assert notebook.follow(str(root), interval=0.02, timeout=0.2, show=lambda h, line: draws.append(line)) is None
    assert 0.2 <= time.monotonic() - start < 10 and draws[-1] == "training: no metrics logged yet"  # never ends
    _log(root, _row(10))
    draws.clear()
    notebook.follow(str(root), live=False, show=lambda h, line: draws.append(line))
    assert draws == ["training: step 10 of 30, loss 7.0000, 1,010 tokens/s, MFU 0.200"]


def test_a_run_on_s3_is_found_and_followed(s3, tmp_path):
    local = tmp_path / "run"
    _start_run(local)
    _log(local, _row(10), _row(20))
    root = f"{s3}/runs/tiny"
    for name in ("recipe.json", "train/metrics.jsonl"):
        storage.write_text(storage.join(root, name), (local / name).read_text())
    assert notebook.find_run_root(root) == root
    assert notebook.status(root, notebook.history(root)).startswith("training: step 20 of 30")
    with pytest.raises(notebook.RunRootError, match=f"{s3}/runs/missing: nothing is there"):
        notebook.find_run_root(f"{s3}/runs/missing")


# -- the long local run's output -----------------------------------------------------------------------------------
def test_pipeline_log_keeps_the_noise_in_a_file_and_shows_the_tail_on_failure(capsys):
    with notebook.pipeline_log("unit") as path:
        print("executor input: {...}")
        print("03:53:34.207 - INFO - Task \x1b[96m'plan'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m")
        print("        [train] 82/300 steps (27%), 2.73 steps/s, 1m20s left, loss 4.303")
    shown = capsys.readouterr().out
    assert f"log: {path}" in shown and "Task 'plan' finished with status SUCCESS" in shown
    assert "\n[train] 82/300 steps (27%)" in shown
    assert "executor input" not in shown and "executor input" in Path(path).read_text()
    with pytest.raises(RuntimeError), notebook.pipeline_log("unit"):
        print("the step's own error message")
        raise RuntimeError("step failed")
    assert "the step's own error message" in capsys.readouterr().out


def test_browse_without_widgets_shows_the_first_documents_per_source():
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"source": ["a"] * 5 + ["b"] * 2, "id": list("1234567"), "text": ["x" * 500] * 7})
    shown = notebook.browse(frame)
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        assert list(shown["id"]) == ["1", "2", "3", "6", "7"] and shown["text"].str.len().max() == 200
    else:
        assert type(shown).__name__ == "VBox"
