"""bench/quality.py's comparison at 125M on one GPU: the standard recipe (best LR of a sweep) against our defaults.

The same data (the quickstart's token shards, built by the pipeline's data steps), the same logic and JSON as
``bench/quality.py`` (``tokens_ratio`` first), at the 125m preset's shape (12 layers, d=768, 12 heads) with
sequences of 1024 tokens, a global batch of 32 and ``--tokens`` (6.5M, about two epochs of the corpus) per
run, in bf16 on one GPU (one process, no compile: a cold compile per run would cost more than it saves).
About 5 minutes on an H100/H200: 3 standard runs, ours, and ours at 0.25 and 0.35 of the budget.

On a device machine that lacks the data steps' dependencies, build the shards here and carry them:

    pretrain data quickstart run_root=.qdata        # ~20 s on a CPU; .qdata is git-ignored
    # then, through the device tool, with .whl (pydantic wheels, see bench/train_gpu.py) and .qdata carried:
    python3 bench/quality_gpu.py --data .qdata

``--smoke`` runs the whole flow on whatever device there is (CPU included) with a tiny model and budget (the
test of this script's logic); its figures mean nothing. ``$OUT`` (the device tool's folder) gets the JSON and
the SVG.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import quality  # noqa: E402  (bench/ is not a package)
import train_gpu  # noqa: E402

GPU = quality.Setup(seq=1024, processes=1, threads=None, label="d=768 (125m), bf16, 1 GPU", overrides={
    "model.hidden_size": 768, "model.num_heads": 12, "model.intermediate_size": 2048, "train.precision": "bf16",
    "train.compile": False, "train.eval_batches": 3})
SMOKE = quality.Setup(seq=64, processes=1, threads=2, label="d=64 smoke", overrides={
    "model.hidden_size": 64, "model.num_heads": 4, "model.intermediate_size": 128, "train.eval_batches": 2})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=6_553_600, help="token budget per full run")
    parser.add_argument("--batch", type=int, default=32, help="global batch (sequences)")
    parser.add_argument("--lrs", type=lambda s: [float(v) for v in s.split(",")], default=[3e-4, 1e-3, 3e-3])
    parser.add_argument("--fractions", type=lambda s: [float(v) for v in s.split(",") if v], default=[0.25, 0.35])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--data", help="a run root with the quickstart's token shards (default: build them)")
    parser.add_argument("--keep", help="work in this folder and keep it (default: a temp dir)")
    parser.add_argument("--smoke", action="store_true", help="a tiny model and budget, any device")
    args = parser.parse_args(argv)
    setup = GPU
    if args.smoke:
        setup, args.tokens, args.batch, args.layers = SMOKE, 64 * 8 * 24, 8, 2
    args.candidate, args.objective = {}, "causal_lm"
    train_gpu.ensure_importable()
    out = Path(os.environ["OUT"]) if os.environ.get("OUT") else None
    work = Path(args.keep or tempfile.mkdtemp(prefix="pretrain-quality-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    start = time.time()
    data_root = os.path.abspath(args.data) if args.data else quality.build_data(work)
    result = quality.compare(work, data_root, args.layers, args, ablate=False, setup=setup)
    svg = (out or work) / "quality_gpu.svg"
    quality.svg([result], svg)
    summary = {k: result[k] for k in ("tokens_ratio", "final_loss_ours", "final_loss_standard", "time_ratio",
                                      "swept_lrs", "best_lr")}
    summary.update({k: v for k, v in result.items() if k not in summary and k != "curves"})
    summary.update({"gpu": train_gpu.gpu_name(), "smoke": args.smoke, "curves": result["curves"],
                    "minutes": round((time.time() - start) / 60, 1), "svg": str(svg)})
    if out:
        (out / "quality_gpu.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
