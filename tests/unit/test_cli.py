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
