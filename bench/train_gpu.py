"""One-GPU training speed: a ~1B Llama (``model.preset=1b``) in bf16 with compile, through our entry point.

Runs with no arguments on a machine with one CUDA GPU, from the repository root, within 5 minutes including
start-up: builds synthetic token shards (random ids, vocabulary 32,000, EOS-separated documents; no hub, no
tokenizer) and a recipe, then runs ``python -m pretrain.train --config RECIPE`` in a fresh process (empty
compile caches) for ``--steps`` (40) steps of ``--micro-batch`` (16; the engine estimates ~98 GiB) x 2048
tokens, and reads its ``metrics.jsonl``.
Prints as its LAST line one JSON object with ``tokens_per_second`` and ``mfu`` first: medians of the logged
spans after ``--warmup`` steps (compilation excluded). ``mfu`` is the engine's (model FLOP/s over the GPU's
dense bf16 peak from its table: 989 TFLOP/s for an H100/H200); ``mfu_vs_989`` recomputes it against 989
TFLOP/s from ``flops_per_token``. Goal: ``mfu`` >= 0.45. Once the last step is logged, the run gets
``--exit-grace`` seconds to write its final checkpoint and exit, then is stopped (the timing is done);
``--budget`` bounds the whole training process.

Set-up on a bare GPU machine (as ``tests/gpu/run.sh``): with no ``pretrain`` importable, the import root is
laid out in a temp folder (``src/pretrain`` plus recipes/components/pipelines); wheels in ``.whl/`` (pydantic,
pydantic-core, annotated-types, typing-inspection, typing-extensions for that machine's Python 3.12, fetched
here with ``pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform
manylinux2014_x86_64 -d .whl NAME==VERSION``) are installed to ``/tmp/site`` first. Through the device tool:
``python3 bench/train_gpu.py`` with ``.whl`` carried. Into ``$OUT``: the run's log, its metrics.jsonl and
the result (train_gpu.json).

``--dry-run`` builds the data and the recipe and validates it (no GPU needed); ``--smoke`` runs the whole
flow with a tiny model for a few steps on whatever device there is (CPU included).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
VOCAB, EOS, SEQ = 32_000, 0, 2048
H100_BF16 = 989e12  # dense bf16 peak of an H100/H200 SXM
GOALS = {"mfu": 0.45, "wall_s": 300}


def log(message: str) -> None:
    print(f"[train-gpu {time.strftime('%H:%M:%S')}] {message}", flush=True)


def ensure_importable() -> None:
    """Make ``pretrain`` (and pydantic) importable here and in the child, as tests/gpu/run.sh does."""
    paths = []
    wheels = sorted((REPO / ".whl").glob("*.whl"))
    try:
        import pydantic  # noqa: F401
    except ImportError:
        if not wheels:
            raise SystemExit("pydantic is missing and no wheels in .whl/: see this file's docstring") from None
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--no-cache-dir", "--upgrade", "--target", "/tmp/site", *map(str, wheels)], check=True)
        paths.append("/tmp/site")
    try:
        import pretrain  # noqa: F401
    except ImportError:
        root = Path(tempfile.mkdtemp(prefix="pretrain-import-"))
        shutil.copytree(REPO / "src" / "pretrain", root / "pretrain")
        for name in ("recipes", "components", "pipelines"):
            if (REPO / name).is_dir():
                shutil.copytree(REPO / name, root / "pretrain" / name)
        paths.insert(0, str(root))
    if paths:
        sys.path[:0] = paths
        importlib.invalidate_caches()
        os.environ["PYTHONPATH"] = os.pathsep.join([*paths, *filter(None, [os.environ.get("PYTHONPATH")])])


def build_tokens(root: Path, tokens: int, vocab: int, seed: int = 0):
    """Random ids in EOS-separated documents (~2,000 tokens on average), one train and one val shard."""
    import numpy as np

    from pretrain import storage
    from pretrain.manifest import Manifest, Shard
    from pretrain.tokens import TokenShardWriter

    rng = np.random.default_rng(seed)
    shards = []
    for split, count in (("train", tokens), ("val", max(8 * (SEQ + 1), tokens // 50))):
        lengths = rng.geometric(1 / 2000, size=count // 1000 + 1)
        lengths = lengths[np.cumsum(lengths) <= count]
        lengths = np.r_[lengths, count - lengths.sum()] if lengths.sum() < count else lengths
        ids = rng.integers(1, vocab, size=count, dtype=np.uint16 if vocab <= 1 << 16 else np.uint32)
        ids[np.cumsum(lengths) - 1] = EOS
        w = TokenShardWriter(storage.join(str(root), "tokens", split, "part-00000"), vocab, EOS, "synthetic",
                             source="synthetic", split=split)
        w.add_documents(ids, lengths, text_bytes=0)
        header = w.close()
        shards.append(Shard(url=w.url, rows=header["tokens"], bytes=header["bytes"],
                            meta={"split": split, "source": "synthetic"}))
    Manifest(kind="tokens", root=str(root / "tokens"), fingerprint="bench-gpu", shards=shards,
             extra={"vocab_size": vocab, "eos_id": EOS, "tokenizer": ""}).save()


def recipe_tree(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    # issue 8's set-up, a plain Llama with AdamW (the speed anchors' model), whatever the quality defaults are
    model: dict[str, Any] = {"preset": "1b", "seq_len": SEQ, "qk_norm": False}
    if args.smoke:
        model = {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "intermediate_size": 128, "seq_len": 128}
    return {
        "name": "bench-train-gpu", "seed": 0, "run_root": str(root),
        "sources": [{"name": "synthetic", "format": "code", "uri": "builtin:stdlib"}],  # not read: tokens exist
        "model": model,
        "train": {"max_steps": args.steps, "micro_batch_size": args.micro_batch, "precision": "bf16",
                  "optimizer": "adamw", "schedule": "cosine", "z_loss": 0.0,
                  "compile": not args.smoke, "compile_cache": str(root / "compile-cache"), "parallel": "ddp",
                  "nproc_per_node": 1, "warmup_steps": 10, "log_interval": args.log_interval,
                  "eval_interval": args.steps, "eval_batches": 1, "checkpoint_interval": args.steps},
        "evaluate": {"batch_size": min(4, args.micro_batch)},
    }


def read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):  # a line being written
            rows.append(json.loads(line))
    return rows


def run_training(root: Path, recipe: str, steps: int, budget: float, grace: float, out: Path | None) -> dict:
    """Spawn the entry point; stop it ``grace`` s after the last step is logged or at ``budget`` s."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", TORCHINDUCTOR_CACHE_DIR=str(root / "inductor-cache"),
               TRITON_CACHE_DIR=str(root / "triton-cache"))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    log_path = (out or root) / "train_gpu.log"
    metrics = root / "train" / "metrics.jsonl"
    start = time.perf_counter()
    first_row = last_row = None
    with open(log_path, "w") as logfile:
        proc = subprocess.Popen([sys.executable, "-m", "pretrain.train", "--config", recipe], env=env,
                                stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True)
        stopped = ""
        while proc.poll() is None:
            time.sleep(1.0)
            now = time.perf_counter() - start
            rows = [r for r in read_rows(metrics) if "step_seconds" in r]
            if rows and first_row is None:
                first_row = now
                log(f"first logged step after {now:.0f} s: {rows[0]}")
            if rows and rows[-1]["step"] >= steps and last_row is None:
                last_row = now
                log(f"last step logged after {now:.0f} s")
            if (last_row is not None and now - last_row > grace) or now > budget:
                stopped = "after the last step (grace over)" if last_row is not None else "budget spent"
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    wall = time.perf_counter() - start
    tail = log_path.read_text()[-3000:]
    print(tail, flush=True)
    return {"returncode": proc.returncode, "wall_s": wall, "stopped": stopped, "first_row_s": first_row,
            "last_row_s": last_row, "rows": read_rows(metrics), "log": tail}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=10, help="steady state: logged spans after this step")
    p.add_argument("--micro-batch", type=int, default=16, help="sequences of 2048 tokens per step")
    p.add_argument("--log-interval", type=int, default=5)
    p.add_argument("--budget", type=float, default=270.0, help="seconds the training process may take at most")
    p.add_argument("--exit-grace", type=float, default=45.0, help="seconds to exit after the last step")
    p.add_argument("--dry-run", action="store_true", help="data and recipe only (no training)")
    p.add_argument("--smoke", action="store_true", help="a tiny model for a few steps, any device")
    args = p.parse_args(argv)
    if args.smoke:
        args.steps, args.warmup, args.micro_batch, args.log_interval = 6, 2, 2, 2
    started = time.perf_counter()
    ensure_importable()
    from pretrain.config import validate

    out = Path(os.environ["OUT"]) if os.environ.get("OUT") else None  # the device tool's folder of results
    if out:
        out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="train-gpu-") as tmp:
        root = Path(tmp) / "run"
        tree = recipe_tree(root, args)
        recipe = validate(tree)
        seq = recipe.model.seq_len
        t = time.perf_counter()
        build_tokens(root, (args.steps * args.micro_batch + 16) * (seq + 1), VOCAB)
        (root / "recipe.json").write_text(json.dumps(tree, indent=1))
        log(f"tokens and recipe in {time.perf_counter() - t:.1f} s: {recipe.model.model_dump()}")
        fpt = flops(recipe)
        if args.dry_run:
            print(json.dumps({"dry_run": True, "flops_per_token": fpt, "model": recipe.model.model_dump(),
                              "train": {k: v for k, v in tree["train"].items() if k != "compile_cache"}}))
            return
        run = run_training(root, str(root / "recipe.json"), args.steps, args.budget, args.exit_grace, out)
        if out and (root / "train" / "metrics.jsonl").exists():
            shutil.copy(root / "train" / "metrics.jsonl", out / "metrics.jsonl")
    rows = [r for r in run["rows"] if "tokens_per_second" in r]
    steady = [r for r in rows if r["step"] > args.warmup] or rows
    if not steady:
        raise SystemExit(f"no step was logged (exit {run['returncode']}, {run['stopped']}):\n{run['log']}")
    tps = statistics.median(r["tokens_per_second"] for r in steady)
    mfu = statistics.median(r["mfu"] for r in steady) if all("mfu" in r for r in steady) else None
    gpu = gpu_name()
    result = {"tokens_per_second": round(tps), "mfu": None if mfu is None else round(mfu, 4),
              "mfu_vs_989": round(tps * fpt / H100_BF16, 4) if fpt else None,
              "step_ms": round(1e3 * statistics.median(r["step_seconds"] for r in steady), 1),
              "peak_memory_gb": max(r.get("peak_memory_gb", 0) for r in rows),
              "first_step_logged_s": None if run["first_row_s"] is None else round(run["first_row_s"], 1),
              "train_process_s": round(run["wall_s"], 1), "stopped": run["stopped"] or f"exit {run['returncode']}",
              "wall_s": round(time.perf_counter() - started, 1), "flops_per_token": fpt, "gpu": gpu,
              "steps": args.steps, "micro_batch": args.micro_batch, "seq_len": seq, "vocab_size": VOCAB,
              "spans": [{k: r[k] for k in ("step", "tokens_per_second", "mfu", "step_seconds") if k in r}
                        for r in rows], "goals": GOALS}
    if out:
        (out / "train_gpu.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


def flops(recipe) -> float | None:
    """Model FLOPs per token as the engine counts them (None while its module is unavailable)."""
    try:
        from pretrain.model.build import hf_config
        from pretrain.model.flops import flops_per_token
    except ImportError:
        return None
    cfg = hf_config(recipe.model, VOCAB, EOS)
    return float(flops_per_token(cfg, recipe.model.seq_len, recipe.train.objective, recipe.train.mask_probability))


def gpu_name() -> str:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "none"


if __name__ == "__main__":
    main()
