# The two commands of the README. Both set up .venv from scratch when needed and are safe to re-run.
#   make run    the quickstart: the whole DAG through KFP's local runner on this machine
#   make test   ruff and the whole test suite (what CI runs)

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# The CPU build of torch; an unpinned torch would pull a multi-GB CUDA build. Off this machine (which
# keeps the CPU wheel locally), add PyTorch's CPU index: make setup PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
TORCH  ?= torch==2.13.0
# Every version pinned: generated from pyproject.toml by scripts/constraints.py (the CPU image uses it too).
CONSTRAINTS ?= constraints/cpu.txt

.PHONY: run test setup clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c $(CONSTRAINTS) "$(TORCH)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c $(CONSTRAINTS) -e ".[dev]"
	touch $@

run: setup
	$(BIN)/pretrain run $(ARGS)

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

clean:
	rm -rf runs local_outputs .pytest_cache
