"""The one tiny run the e2e tests share (the whole DAG through the CLI, on the tiny recipe plus every reader
family): session-scoped, so the DAG tests and the notebooks look at the same run and it is built once."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest


def write_mixed_recipe(cwd: Path) -> Path:
    """The tiny recipe plus a Wikipedia dump, a JSONL file and a WET file: every family of readers in one DAG."""
    import yaml

    from pretrain.config import builtin_recipe_path
    from pretrain.data.samples import tables, web, wikipedia

    inputs = cwd / "inputs"
    (inputs / "wiki").mkdir(parents=True)
    wikipedia.write_wikipedia_dump(str(inputs / "wiki" / "dump.xml.bz2"), pages=40)
    tables.write_jsonl(inputs / "jsonl" / "docs.jsonl", 80)
    web.write_wet(inputs / "wet" / "crawl.warc.wet.gz", 40)
    recipe = yaml.safe_load(builtin_recipe_path("tiny").read_text())
    recipe["sources"] += [
        {"name": "wiki", "format": "wikipedia", "uri": str(inputs / "wiki"), "license": "CC-BY-SA-4.0"},
        {"name": "jsonl", "format": "jsonl", "uri": str(inputs / "jsonl"), "id_field": "id"},
        {"name": "wet", "format": "wet", "uri": str(inputs / "wet")},
    ]
    path = cwd / "mixed.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def run_recipe(recipe: Path, cwd: Path, timeout: int) -> tuple[subprocess.CompletedProcess, float]:
    """`pretrain run RECIPE` in ``cwd``, as a user runs it: the finished process and its seconds; it must succeed."""
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pretrain.cli", "run", str(recipe)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ))
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc, elapsed


@pytest.fixture(scope="session")
def pretrain_run():
    """``run_recipe`` for the e2e modules' own run fixtures."""
    return run_recipe


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess, float]:
    """(run root, the `pretrain run` process, its seconds); the recipe is ``<run root>/../../mixed.yaml``."""
    cwd = tmp_path_factory.mktemp("e2e")
    proc, elapsed = run_recipe(write_mixed_recipe(cwd), cwd, timeout=300)
    return cwd / "runs" / "tiny", proc, elapsed
