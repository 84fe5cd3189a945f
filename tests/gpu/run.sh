#!/usr/bin/env bash
# The device check: run on a machine with a CUDA GPU from the repository root, e.g. through the
# workplace's device tool with `.whl` (pydantic wheels for that machine's Python) carried along.
set -uo pipefail
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
# The import root as the wheel lays it out (pretrain + pretrain.recipes/components/pipelines), no install needed.
pkg=$(mktemp -d); cp -r src/pretrain "$pkg/"; for d in recipes components pipelines; do cp -r "$d" "$pkg/pretrain/$d"; done
export PYTHONPATH="$pkg:$PWD/tests${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OUT="${OUT:-/tmp}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
python3 -m pytest -p no:cacheprovider -o addopts="" -m gpu tests/gpu -x -q -s 2>&1 | tee "$OUT/gpu-tests.log"
