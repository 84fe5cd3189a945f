"""Model quality per token: our default training recipe against the standard (nanoGPT) recipe, same data and budget.

Runs with no arguments. Builds its input with the pipeline's own data steps (``pretrain.steps.data``) from the
quickstart corpus (stdlib code + pydoc web pages) into a temp dir (``--data DIR`` reuses a run root that already
has token shards, e.g. ``runs/quickstart`` after ``make run``). Every run is the training entry point
(``python -m torch.distributed.run ... -m pretrain.train``, 2 gloo processes x 1 thread) on those shards:

- the shape: the quickstart's (4 layers, d=192, 6 heads, seq_len 256, the tokenizer's vocabulary), global batch
  ``--batch`` (16) x 256 tokens, ``--tokens`` (1.64M) tokens; ``--sizes 4,8`` also runs a 2x deeper model;
- (a) ``standard``: nanoGPT's recipe: AdamW (0.9, 0.95), weight decay 0.1 on every 2-D parameter (embeddings
  too), 5% linear warmup, cosine to 10%, tied embeddings, HF init, plain attention; its learning rate the best
  final validation loss of a sweep (``--lrs``, default 1e-3, 3e-3, 1e-2; extended by x3 steps while the best
  sits at an edge, up to 2 extensions);
- (b) ``ours``: the quickstart recipe as bundled, i.e. the project's defaults, with only the budget changed (no
  per-benchmark tuning). As its schedule may decay only at the end (WSD), its tokens-to-target is also measured
  by whole runs of ``ours`` with smaller budgets (``--fractions``, default 0.25, 0.35);
- ``--objective masked_lm``: the same comparison for the quickstart-shaped encoder (ModernBERT, 15% masking);
- ``--ablate`` (off by default; ~18 min more): ``ours`` with one choice at a time switched back to the standard's
  (each choice's share), at the first size.
  ``--candidate key=value,...`` measures a candidate default set (added to ``ours``) before it becomes the default;
  the JSON then says ``"ours": "candidate"`` and lists it.

``tokens_ratio``: the tokens our recipe needs to reach (a)'s final validation loss over (a)'s budget: the smallest
of the full run's validation curve (interpolated between evaluations) and the final losses of whole runs at each
budget (interpolated between budgets, as a WSD run only decays at its end); ``time_ratio``: the same for training
wall-clock (sum of logged step times, so start-up and evaluations count for neither side).
Loss curves do not depend on machine load; times do.

Prints, last, one JSON object: ``tokens_ratio``, ``final_loss_ours``, ``final_loss_standard``, ``time_ratio``,
``swept_lrs``, ``best_lr``, then the second size's figures, the ablations and the curves. ``--svg PATH`` writes
the validation curves as an SVG plot (default ``bench/quality.svg``). About 42 minutes on 2 cores
(the issue's limit is 45).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

SEQ = 256
PROCESSES = 2
# The standard recipe's settings (nanoGPT), as overrides of the bundled quickstart recipe.
STANDARD = {"train.optimizer": "adamw", "train.betas": [0.9, 0.95], "train.weight_decay": 0.1,
            "train.decay_embeddings": True, "train.schedule": "cosine", "train.min_lr_ratio": 0.1,
            "train.z_loss": 0.0, "train.embedding_lr": None, "train.head_lr": None,
            "model.qk_norm": False, "model.init": "hf", "model.tie_embeddings": True}
# One choice of ours at a time set back to the standard's: name -> overrides.
ABLATIONS = {
    "adamw_instead_of_muon": {"train.optimizer": "adamw"},
    "cosine_instead_of_wsd": {"train.schedule": "cosine", "train.min_lr_ratio": 0.1},
    "no_qk_norm": {"model.qk_norm": False},
    "no_z_loss": {"train.z_loss": 0.0},
    "hf_init": {"model.init": "hf"},
}
HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Setup:
    """Where and at what shape the comparison runs: the quickstart's shape on this CPU by default (bench/quality_gpu.py
    passes a 125M shape on one GPU). ``overrides`` are recipe keys applied to both recipes alike."""

    seq: int = SEQ
    processes: int = PROCESSES
    threads: int | None = 1  # per process; None: torch's default (a GPU process)
    overrides: dict[str, Any] = field(default_factory=dict)
    label: str = "d=192"


def log(message: str) -> None:
    print(f"[quality-bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclass
class Run:
    name: str
    overrides: dict[str, Any]
    steps: int
    curve: list[tuple[int, float]] = field(default_factory=list)  # (tokens, val loss)
    seconds: list[tuple[int, float]] = field(default_factory=list)  # (tokens, training seconds so far)
    wall: float = 0.0

    @property
    def final(self) -> float:
        return self.curve[-1][1]


# ---------------------------------------------------------------------------------------------------- data

def build_data(work: Path) -> str:
    """The quickstart's token shards, made by the pipeline's data steps; the run root that holds them."""
    from pretrain import steps
    from pretrain.config import load_recipe

    recipe = load_recipe("quickstart", [f"run_root={work / 'data'}"])
    log("building the quickstart's token shards with the data steps (plan -> ... -> tokenize)")
    start = time.time()
    tokens = steps.data(recipe)
    log(f"data: {tokens.stats.get('train_tokens'):,} train / {tokens.stats.get('val_tokens'):,} val tokens "
        f"in {time.time() - start:.0f} s")
    return recipe.root


# ---------------------------------------------------------------------------------------------------- runs

def base_overrides(steps: int, batch: int, layers: int, setup: Setup) -> dict[str, Any]:
    per_rank = batch // setup.processes
    evals = max(1, steps // 12)
    return {"model.num_layers": layers, "model.seq_len": setup.seq, "train.max_steps": steps,
            "train.micro_batch_size": per_rank, "train.grad_accum_steps": 1, "train.nproc_per_node": setup.processes,
            "train.threads_per_process": setup.threads, "train.nnodes": 1, "train.launcher": "local",
            "train.log_interval": max(1, evals // 2),
            "train.eval_interval": evals, "train.eval_batches": 12, "train.checkpoint_interval": steps,
            "train.checkpoint_minutes": None, "train.warmup_steps": max(1, steps // 20),
            "train.stability.action": "off", "evaluate.batch_size": 8, **setup.overrides}


def write_run(work: Path, data_root: str, run: Run, base: dict[str, Any]) -> Path:
    """A fresh run root whose tokens manifest points at the shared shards, and its resolved recipe."""
    import yaml

    from pretrain.config import load_recipe
    from pretrain.manifest import Manifest

    root = work / "runs" / run.name
    tokens = Manifest.load(os.path.join(data_root, "tokens"))
    here = os.path.join(data_root, "tokens")  # the shards' folder now (a carried copy may have moved)
    shards = [replace(shard, url=here + shard.url[len(tokens.root):]) if shard.url.startswith(tokens.root) else shard
              for shard in tokens.shards]
    Manifest(kind="tokens", root=str(root / "tokens"), fingerprint=tokens.fingerprint, shards=shards,
             stats=tokens.stats, extra=tokens.extra).save()
    overrides = {**base, **run.overrides, "run_root": str(root)}
    recipe = load_recipe("quickstart", [f"{k}={json.dumps(v)}" for k, v in overrides.items()])
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
    return path


def finished(metrics: Path, steps: int) -> bool:
    """The run logged its final validation loss (``--keep`` reuses it: a long benchmark can be resumed)."""
    if not metrics.exists():
        return False
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return any(r.get("step") == steps and "val_loss" in r for r in rows)


def train(work: Path, data_root: str, run: Run, base: dict[str, Any], tokens_per_step: int) -> Run:
    recipe_file = work / "runs" / run.name / "recipe.yaml"
    before = recipe_file.read_text() if recipe_file.exists() else None
    config = write_run(work, data_root, run, base)
    metrics = config.parent / "train" / "metrics.jsonl"
    if before == config.read_text() and finished(metrics, run.steps):
        log(f"{run.name}: reusing the finished run in {config.parent}")
        return read_run(run, metrics, tokens_per_step)
    if metrics.exists():
        metrics.unlink()  # a changed or unfinished run starts over
        for old in (config.parent / "checkpoints").glob("*"):
            subprocess.run(["rm", "-rf", str(old)], check=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    if base["train.threads_per_process"]:
        env["OMP_NUM_THREADS"] = str(base["train.threads_per_process"])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={base['train.nproc_per_node']}",
           "-m", "pretrain.train", "--config", str(config)]
    start = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    run.wall = time.time() - start
    if proc.returncode:
        raise RuntimeError(f"run {run.name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    read_run(run, metrics, tokens_per_step)
    log(f"{run.name}: final val loss {run.final:.4f} ({run.wall:.0f} s)")
    return run


def read_run(run: Run, metrics: Path, tokens_per_step: int) -> Run:
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    run.curve = [(r["step"] * tokens_per_step, r["val_loss"]) for r in records if "val_loss" in r]
    elapsed, last = 0.0, 0
    for r in records:
        if "step_seconds" in r:
            elapsed += r["step_seconds"] * (r["step"] - last)
            last = r["step"]
            run.seconds.append((r["step"] * tokens_per_step, elapsed))
    return run


def crossing(curve: list[tuple[int, float]], target: float) -> float | None:
    """The first point (tokens) where the curve reaches ``target``, interpolated linearly between evaluations."""
    for (t0, l0), (t1, l1) in itertools.pairwise(curve):
        if l1 <= target:
            if l0 <= target:
                return float(t0)
            return t0 + (t1 - t0) * (l0 - target) / (l0 - l1)
    return None


def at(points: list[tuple[int, float]], tokens: float) -> float:
    """Linear interpolation of (tokens, value) points at ``tokens`` (0 before the first)."""
    previous = (0, 0.0)
    for t, v in points:
        if t >= tokens:
            t0, v0 = previous
            return v0 + (v - v0) * (tokens - t0) / max(t - t0, 1)
        previous = (t, v)
    return points[-1][1] if points else 0.0


def sweep(work: Path, data_root: str, prefix: str, lrs: list[float], base: dict[str, Any], tokens_per_step: int,
          steps: int) -> tuple[dict[float, Run], float]:
    """The standard recipe at each learning rate, extending the grid while the best sits at an edge."""
    runs: dict[float, Run] = {}
    grid = sorted(lrs)
    for _ in range(3):
        for lr in grid:
            if lr not in runs:
                runs[lr] = train(work, data_root, Run(f"{prefix}-standard-lr{lr:g}", {**STANDARD, "train.lr": lr},
                                                      steps), base, tokens_per_step)
        best = min(runs, key=lambda lr: runs[lr].final)
        ordered = sorted(runs)
        if best == ordered[0] and best / 3 >= 1e-5:
            grid = [float(f"{best / 3:.3g}")]
        elif best == ordered[-1] and best * 3 <= 0.3:
            grid = [float(f"{best * 3:.3g}")]
        else:
            break
    return runs, min(runs, key=lambda lr: runs[lr].final)


def compare(work: Path, data_root: str, layers: int, args: argparse.Namespace, ablate: bool,
            setup: Setup = Setup()) -> dict[str, Any]:
    """One model size: the standard sweep, ours, ours at smaller budgets, the ablations."""
    steps = args.tokens // (args.batch * setup.seq)
    tokens_per_step = args.batch * setup.seq
    base = {**base_overrides(steps, args.batch, layers, setup), "train.objective": args.objective, **args.candidate}
    prefix = f"L{layers}"
    standard, best_lr = sweep(work, data_root, prefix, args.lrs, base, tokens_per_step, steps)
    anchor = standard[best_lr]
    target, budget = anchor.final, steps * tokens_per_step
    ours = train(work, data_root, Run(f"{prefix}-ours", {}, steps), base, tokens_per_step)  # base has --candidate
    reach = crossing(ours.curve, target)
    candidates = [reach] if reach is not None else []
    times = [at(ours.seconds, reach)] if reach is not None else []
    shorter = {}
    budgets = []  # (tokens, final loss, training seconds) of whole runs of ours, the full one included
    for fraction in args.fractions:
        short_steps = max(1, round(steps * fraction))
        run = train(work, data_root, Run(f"{prefix}-ours-{fraction:g}", {}, short_steps),
                    {**base_overrides(short_steps, args.batch, layers, setup), "train.objective": args.objective,
                     **args.candidate}, tokens_per_step)
        shorter[f"{fraction:g}"] = round(run.final, 4)
        budgets.append((short_steps * tokens_per_step, run.final, run.seconds[-1][1]))
    budgets.append((budget, ours.final, ours.seconds[-1][1]))
    by_budget = crossing([(t, loss) for t, loss, _ in sorted(budgets)], target)
    if by_budget is not None:  # loss after a whole (decayed) run, interpolated between the budgets measured
        candidates.append(by_budget)
        times.append(at([(t, s) for t, _, s in sorted(budgets)], by_budget))
    anchor_time = anchor.seconds[-1][1]
    result: dict[str, Any] = {
        "tokens_ratio": round(min(candidates) / budget, 4) if candidates else None,
        "final_loss_ours": round(ours.final, 4), "final_loss_standard": round(target, 4),
        "time_ratio": round(min(times) / anchor_time, 4) if times else None,
        "swept_lrs": sorted(standard), "best_lr": best_lr,
        "standard_final_by_lr": {f"{lr:g}": round(r.final, 4) for lr, r in sorted(standard.items())},
        "ours_final_at_fraction_of_budget": shorter, "budget_tokens": budget, "layers": layers,
        "shape": setup.label,
        "curves": {"standard": anchor.curve, "ours": ours.curve},
    }
    if ablate:
        shares = {}
        for name, overrides in ABLATIONS.items():
            run = train(work, data_root, Run(f"{prefix}-ours-{name}", overrides, steps), base, tokens_per_step)
            reached = crossing(run.curve, target)
            shares[name] = {"final_loss": round(run.final, 4), "loss_cost": round(run.final - ours.final, 4),
                            "tokens_ratio_full_run": round(reached / budget, 4) if reached else None}
            result["curves"][name] = run.curve
        result["ablations"] = shares
    return result


# ---------------------------------------------------------------------------------------------------- plot

def svg(results: list[dict[str, Any]], path: Path) -> None:
    """Validation loss against tokens for each size: standard (best LR) and ours, ablations dashed."""
    width, height, pad = 760, 320 * len(results), 50
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="12">', f'<rect width="{width}" height="{height}" fill="white"/>']
    colours = {"standard": "#d62728", "ours": "#1f77b4"}
    for i, result in enumerate(results):
        top = i * 320
        curves = result["curves"]
        points = [p for c in curves.values() for p in c[1:]]
        xmax = max(t for t, _ in points)
        ymin, ymax = min(v for _, v in points), max(v for _, v in points)
        ymax = min(ymax, ymin + 3)

        def x(t: float, xmax: float = xmax) -> float:
            return pad + (width - 2 * pad) * t / xmax

        def y(v: float, top: int = top, ymin: float = ymin, ymax: float = ymax) -> float:
            return top + 20 + (270 - 40) * (ymax - min(v, ymax)) / (ymax - ymin)

        parts.append(f'<text x="{pad}" y="{top + 14}">{result["layers"]} layers, {result["shape"]}: validation loss '
                     f'vs tokens (standard lr {result["best_lr"]:g}; tokens_ratio {result["tokens_ratio"]})</text>')
        parts.append(f'<line x1="{pad}" y1="{y(ymin)}" x2="{width - pad}" y2="{y(ymin)}" stroke="#888"/>')
        parts.append(f'<line x1="{pad}" y1="{y(ymax)}" x2="{pad}" y2="{y(ymin)}" stroke="#888"/>')
        for v in (ymin, (ymin + ymax) / 2, ymax):
            parts.append(f'<text x="4" y="{y(v) + 4}">{v:.2f}</text>')
        parts.append(f'<text x="{width - pad - 60}" y="{y(ymin) + 16}">{xmax / 1e6:.2f}M tokens</text>')
        parts.append(f'<line x1="{pad}" y1="{y(result["final_loss_standard"])}" x2="{width - pad}" '
                     f'y2="{y(result["final_loss_standard"])}" stroke="#d62728" stroke-dasharray="2,3"/>')
        for k, (name, curve) in enumerate(curves.items()):
            colour = colours.get(name, f"hsl({(k * 67) % 360},40%,55%)")
            dash = "" if name in colours else ' stroke-dasharray="5,3"'
            line = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in curve[1:])
            parts.append(f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>')
            legend_y = top + 40 + 14 * k
            parts.append(f'<line x1="{width - pad - 175}" y1="{legend_y - 4}" x2="{width - pad - 155}" '
                         f'y2="{legend_y - 4}" stroke="{colour}" stroke-width="2"{dash}/>')
            parts.append(f'<text x="{width - pad - 150}" y="{legend_y}" fill="{colour}">{name}</text>')
    parts.append("</svg>")
    path.write_text("\n".join(parts))


def parse_candidate(text: str) -> dict[str, Any]:
    import yaml

    pairs = [item.split("=", 1) for item in text.split(",") if item]
    return {key: yaml.safe_load(value) for key, value in pairs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=1_638_400, help="token budget per full run")
    parser.add_argument("--batch", type=int, default=16, help="global batch (sequences of 256 tokens)")
    parser.add_argument("--lrs", type=lambda s: [float(v) for v in s.split(",")], default=[1e-3, 3e-3, 1e-2])
    parser.add_argument("--fractions", type=lambda s: [float(v) for v in s.split(",") if v],
                        default=[0.25, 0.35])
    parser.add_argument("--sizes", type=lambda s: [int(v) for v in s.split(",")], default=[4, 8])
    parser.add_argument("--ablate", action="store_true",
                        help="also run ours with each choice switched back, at the first size (~+18 min)")
    parser.add_argument("--candidate", type=parse_candidate, default={},
                        help="key=value,... added to ours (and under the standard's overrides): a default to be")
    parser.add_argument("--objective", choices=["causal_lm", "masked_lm"], default="causal_lm",
                        help="masked_lm: the same comparison for an encoder (ModernBERT, 15%% masking)")
    parser.add_argument("--data", help="a run root with the quickstart's token shards (default: build them)")
    parser.add_argument("--keep", help="work in this folder and keep it (default: a temp dir)")
    parser.add_argument("--svg", default=str(HERE / "quality.svg"))
    args = parser.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="pretrain-quality-"))
    work.mkdir(parents=True, exist_ok=True)
    start = time.time()
    data_root = args.data or build_data(work)
    results = [compare(work, data_root, layers, args, ablate=args.ablate and i == 0)
               for i, layers in enumerate(args.sizes)]
    svg(results, Path(args.svg))
    head, *others = results
    summary = {k: head[k] for k in ("tokens_ratio", "final_loss_ours", "final_loss_standard", "time_ratio",
                                    "swept_lrs", "best_lr")}
    summary["ours"] = {"candidate": args.candidate} if args.candidate else "defaults"
    summary["objective"] = args.objective
    summary["goal_tokens_ratio"] = 0.35
    summary["meets_goal"] = bool(head["tokens_ratio"] is not None and head["tokens_ratio"] <= 0.35
                                 and head["final_loss_ours"] < head["final_loss_standard"])
    for other in others:
        summary[f"L{other['layers']}"] = {k: v for k, v in other.items() if k != "curves"}
    summary[f"L{head['layers']}_details"] = {k: v for k, v in head.items() if k != "curves"}
    summary["curves"] = {f"L{r['layers']}": r["curves"] for r in results}
    summary["minutes"] = round((time.time() - start) / 60, 1)
    summary["svg"] = args.svg
    log(f"done in {summary['minutes']} min; plot: {args.svg}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
