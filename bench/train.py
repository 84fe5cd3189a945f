"""Training speed on CPU: pretrain's entry point vs the Hugging Face ``Trainer``, side by side, from cold starts.

Runs with no arguments. Builds its input in a temp dir: real text from the installed Python (stdlib ``.py``
sources and the language reference's sections), a 4,096-token byte-level BPE trained on it
(``pretrain.data.tokenizer``), the text packed into token shards (``TokenShardWriter``) with a tokens
manifest, as the tokenize step leaves them. Model: a ~17M-parameter Llama (hidden 512, 4 layers, 8 heads,
intermediate 1792, vocabulary 4096, tied embeddings, seq_len 256, no KV cache), batch 8 x 256, ``--steps``
(200) steps, warmup 20 then cosine to 10% of lr 3e-3, AdamW (0.9, 0.95), weight decay 0.1, clipping at 1.0.

Each run is a fresh process (empty ``TORCHINDUCTOR_CACHE_DIR`` and ``train.compile_cache``), timed from spawn
to exit, so start-up and compilation count:
- ours: ``python -m pretrain.train --config RECIPE``, bf16, our defaults otherwise, in one fixed configuration
  (``ours_config``, ``HEADLINE``: one process with 2 threads, no compile); ``--configs all`` also runs
  compile on and ``torchrun`` with 2 processes of 1 thread, each listed under ``ours_configs``. Our run also
  evaluates once at the start and at the end (one batch) and writes its final checkpoint: the anchor does not;
- the anchor: ``transformers.Trainer`` (``bench/train_trainer_worker.py``) in bf16, and in bf16 with
  ``torch_compile=True``, on the very windows our loader hands our run, in the same order.

``vs_trainer`` = our whole-run tokens/s (steps x 8 x 256 / wall seconds) over the better Trainer variant's;
``steady_state_vs_trainer``: the ratio of median step times after warm-up (10-step spans, step > 20) against
that same variant (``steady_state_vs_trainer_<variant>``: against each).
``mfu``: our steady-state model FLOP/s (``flops_per_token`` from our summary: attention and LM head counted,
no credit for recompute) over the bf16 rate of a 4096 x 4096 matmul on the same 2 threads, measured here
(the better of a probe before and one after the runs: load from elsewhere only ever slows a probe).
Checkpoint: the same model and AdamW state (after a step) saved with ``CheckpointManager``: how long the step
is blocked by an asynchronous save, per GB of state (median of 3 saves; ``_max`` the worst); sync save and
restore GB/s (medians of 3).

``phases``: seconds after spawn at which each side reached its milestones (ours: the first evaluation, the
first logged steps; the Trainer: its ``train()`` call, its first steps), and its time after the last step.

The LAST line printed is one JSON object with ``vs_trainer`` and ``mfu`` first. About 10 minutes on 2 cores
(``--steps`` fewer while developing). Needs the ``bench`` extra (``accelerate`` for the Trainer).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

BATCH, SEQ, VOCAB, THREADS = 8, 256, 4096, 2
MODEL = {"hidden_size": 512, "num_layers": 4, "num_heads": 8, "intermediate_size": 1792, "seq_len": SEQ}
OPTIM = {"lr": 3e-3, "betas": (0.9, 0.95), "weight_decay": 0.1, "warmup_steps": 20, "min_lr_ratio": 0.1}
WARMUP = 20  # steady state: logged 10-step spans after this step
# name -> (processes, compile): threads per process = THREADS / processes, global batch BATCH either way
CONFIGS = {"1x2": (1, False), "1x2-compile": (1, True), "2x1": (2, False), "2x1-compile": (2, True)}
# The headline: the best whole run by `--configs all` (compile's cold start cost more than it saved in 200 steps)
HEADLINE = "1x2"
GOALS = {"vs_trainer": 1.3, "mfu": 0.5, "checkpoint_block_s_per_gb": 0.1}
HERE = Path(__file__).resolve().parent


def log(message: str) -> None:
    print(f"[train-bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------------------------------------------- inputs

def texts(chars: int, seed: int = 0) -> list[str]:
    """About ``chars`` characters of real text: stdlib sources (most) and reference sections, shuffled."""
    from pydoc_data.topics import topics

    from pretrain.data.samples.stdlib import chunks, stdlib_sources

    rng = random.Random(seed)
    prose = [c for key in sorted(topics) for c in chunks(topics[key], 3000, 400)]
    code = [s for s in stdlib_sources() if len(s) > 1000]
    rng.shuffle(code)
    out, size = list(prose), sum(map(len, prose))
    for doc in code:
        if size >= chars:
            break
        out.append(doc)
        size += len(doc)
    rng.shuffle(out)
    return out


def build_data(work: Path, steps: int) -> dict[str, Any]:
    """Tokenizer, train/val token shards and the windows of every step (for the anchor), under ``work``."""
    from pretrain import storage
    from pretrain.config import TokenizerConfig
    from pretrain.data.tokenizer import EOS, Encoder, train_tokenizer
    from pretrain.manifest import Shard
    from pretrain.tokens import ShardRef, TokenLoader, TokenShardWriter

    start = time.perf_counter()
    need = (steps * BATCH + 64) * (SEQ + 1)  # every window once (the loader draws without repeats), + margin
    docs = texts(need * 5)  # ~3.5 characters a token with this vocabulary, some to spare
    tok = train_tokenizer([docs[i:i + 64] for i in range(0, len(docs), 64)], TokenizerConfig(vocab_size=VOCAB))
    eos = tok.token_to_id(EOS)
    ids = Encoder.create(tok, "auto").encode_batch(docs)
    n_val = max(4, len(docs) // 20)
    shards = []
    for split, part in (("train", ids[n_val:]), ("val", ids[:n_val])):
        w = TokenShardWriter(storage.join(str(work), "tokens", split, "part-00000"), VOCAB, eos, "bench",
                             source="stdlib", split=split)
        w.add_documents(np.concatenate([np.append(a, eos) for a in part]).astype(np.uint32),
                        np.array([len(a) + 1 for a in part]), text_bytes=0)
        header = w.close()
        shards.append(Shard(url=w.url, rows=header["tokens"], bytes=header["bytes"],
                            meta={"split": split, "source": "stdlib"}))
    train = shards[0]
    if train.rows < need:
        raise RuntimeError(f"{train.rows} training tokens, {need} needed: raise the text budget")
    loader = TokenLoader([ShardRef(train.url, "stdlib", train.rows)], SEQ, seed=0)
    windows = np.concatenate([loader.batch(s, 0, 1, BATCH).tokens for s in range(steps)]).astype(np.uint16)
    np.save(work / "windows.npy", windows)
    log(f"data: {len(docs)} documents, {sum(map(len, docs)) / 1e6:.1f} M characters -> {train.rows:,} train + "
        f"{shards[1].rows:,} val tokens, vocabulary {tok.get_vocab_size()} in {time.perf_counter() - start:.1f} s")
    return {"shards": shards, "eos": eos, "pad": None}  # as the tokenize step's manifest: no pad id


def recipe_tree(root: Path, steps: int, processes: int, compile_: bool) -> dict[str, Any]:
    """Our default recipe in bf16 for this model and run length (``compile`` and the process layout set)."""
    return {
        "name": "bench-train", "seed": 0, "run_root": str(root),
        "sources": [{"name": "stdlib", "format": "code", "uri": "builtin:stdlib"}],  # not read: tokens exist
        # The set-up, pinned against later default changes: a plain Llama trained with AdamW + cosine
        # (the quality defaults, Muon and QK-norm, are measured by bench/quality.py, not here).
        "model": {**MODEL, "qk_norm": False},
        "train": {"max_steps": steps, "micro_batch_size": BATCH // processes, "precision": "bf16",
                  "optimizer": "adamw", "z_loss": 0.0,
                  "compile": compile_, "compile_cache": str(root / "compile-cache"), "nproc_per_node": processes,
                  "threads_per_process": THREADS // processes, "lr": OPTIM["lr"], "betas": list(OPTIM["betas"]),
                  "weight_decay": OPTIM["weight_decay"], "warmup_steps": OPTIM["warmup_steps"],
                  "min_lr_ratio": OPTIM["min_lr_ratio"], "schedule": "cosine", "grad_clip": 1.0,
                  "log_interval": 10, "eval_interval": steps, "eval_batches": 1, "checkpoint_interval": steps},
        "evaluate": {"batch_size": BATCH},
    }


def write_run(work: Path, name: str, data: dict[str, Any], steps: int, processes: int = 1,
              compile_: bool = False) -> tuple[Path, str]:
    """A fresh run root holding the shared shards' tokens manifest and the recipe; (root, recipe path)."""
    from pretrain.config import validate
    from pretrain.manifest import Manifest

    root = work / "runs" / name
    Manifest(kind="tokens", root=str(root / "tokens"), fingerprint="bench-train", shards=data["shards"],
             extra={"vocab_size": VOCAB, "eos_id": data["eos"], "tokenizer": ""}).save()
    tree = recipe_tree(root, steps, processes, compile_)
    validate(tree)  # fail here, not in the subprocess
    path = root / "recipe.json"
    path.write_text(json.dumps(tree, indent=1))
    return root, str(path)


def write_anchor_config(work: Path, data: dict[str, Any]) -> int:
    """The LlamaConfig our recipe builds, for the Trainer to build the same model; its parameter count."""
    from pretrain.config import validate
    from pretrain.model.build import hf_config
    from pretrain.model.memory import parameter_counts

    recipe = validate(recipe_tree(work, 1, 1, False))
    config = hf_config(recipe.model, VOCAB, data["eos"], data["pad"])
    config.to_json_file(str(work / "config.json"))
    return parameter_counts(config).total


# ---------------------------------------------------------------------------------------------------- probes

def matmul_flops(threads: int, n: int = 4096, repeats: int = 7) -> float:
    """bf16 FLOP/s of an n x n matmul on ``threads`` threads: median of ``repeats`` after a warm-up."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n, dtype=torch.bfloat16), torch.randn(n, n, dtype=torch.bfloat16)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / statistics.median(times)


def fresh_env(cache: Path, threads: int) -> dict[str, str]:
    """A cold start: empty compiler caches, no distributed variables of ours leaking in."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT", "LOCAL_WORLD_SIZE")}
    cache.mkdir(parents=True, exist_ok=True)
    env.update({"TORCHINDUCTOR_CACHE_DIR": str(cache), "TRITON_CACHE_DIR": str(cache / "triton"),
                "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"})
    return env


def timed(cmd: list[str], env: dict[str, str], what: str, watch: Path | None = None) -> tuple[float, str, dict]:
    """Wall seconds from spawn to exit, the output, and when each line of ``watch`` (a metrics.jsonl) first
    appeared (seconds after spawn, by its step and kind); raises with the output's tail when the process fails."""
    seen: dict[str, float] = {}
    with tempfile.TemporaryFile("w+") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
        while proc.poll() is None:
            time.sleep(0.1)
            if watch is not None and watch.exists():
                now = time.perf_counter() - start
                for line in watch.read_text().splitlines():
                    if line.endswith("}"):
                        row = json.loads(line)
                        seen.setdefault(f"{'eval' if 'val_loss' in row else 'train'}-{row['step']}", now)
        wall = time.perf_counter() - start
        out.seek(0)
        text = out.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed ({proc.returncode}):\n{text[-4000:]}")
    return wall, text, seen


def phases(result: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.1f}" for k, v in result["phases"].items() if v is not None)


def warm(steps: int) -> int:
    """The step after which spans count as steady (fewer while developing with ``--steps``)."""
    return min(WARMUP, steps // 2)


def span_median(step_seconds: list[float], after: int, span: int = 10) -> float:
    """Median of mean step times over spans of ``span`` steps, counting from step ``after`` + 1."""
    spans = [statistics.fmean(step_seconds[i:i + span]) for i in range(after, len(step_seconds) - span + 1, span)]
    return statistics.median(spans) if spans else statistics.median(step_seconds)


# ---------------------------------------------------------------------------------------------------- sides

def run_ours(work: Path, data: dict[str, Any], name: str, steps: int) -> dict[str, Any]:
    processes, compile_ = CONFIGS[name]
    root, recipe = write_run(work, f"ours-{name}", data, steps, processes, compile_)
    entry = ["-m", "pretrain.train", "--config", recipe]
    cmd = [sys.executable, *entry] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}", *entry]
    metrics = root / "train" / "metrics.jsonl"
    wall, out, seen = timed(cmd, fresh_env(root / "inductor-cache", THREADS // processes), f"ours ({name})", metrics)
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    summary = json.loads((root / "train" / "summary.json").read_text())
    steady = [r for r in rows if "step_seconds" in r and r["step"] > warm(steps)]
    step_s = statistics.median(r["step_seconds"] for r in steady)
    result = {"config": name, "wall_s": wall, "tokens_per_second": steps * BATCH * SEQ / wall,
              "step_s": step_s, "steady_tokens_per_second": BATCH * SEQ / step_s,
              "flops_per_token": summary["flops_per_token"], "parameters": summary["parameters"],
              "first_loss": next(r["loss"] for r in rows if "loss" in r),
              "last_loss": [r["loss"] for r in rows if "loss" in r][-1],
              "val_loss": [r["val_loss"] for r in rows if "val_loss" in r],
              "engine_mfu": statistics.median(r["mfu"] for r in steady) if all("mfu" in r for r in steady) else None,
              "peak_memory_gb": max((r.get("peak_memory_gb", 0) for r in rows), default=0)}
    result["startup_s"] = wall - steps * step_s  # what the run spent beyond its steady steps
    first = min(r["step"] for r in rows if "step_seconds" in r)
    result["phases"] = {  # seconds after spawn, as seen by polling the metrics file every 0.1 s
        "until_first_eval_s": seen.get("eval-0"),  # imports, checks, model, the first evaluation
        f"until_step_{first}_s": seen.get(f"train-{first}"),  # + the first steps (compilation)
        f"until_step_{steps}_s": seen.get(f"train-{steps}"),
        "after_last_step_s": wall - seen[f"train-{steps}"] if f"train-{steps}" in seen else None}
    log(f"ours {name}: {wall:.1f} s wall, {result['tokens_per_second']:.0f} tokens/s whole run, step "
        f"{step_s * 1e3:.0f} ms ({result['steady_tokens_per_second']:.0f} tokens/s), ~{result['startup_s']:.1f} s "
        f"beyond steady steps, loss {result['first_loss']:.2f} -> {result['last_loss']}; {phases(result)}")
    if os.environ.get("BENCH_TRAIN_VERBOSE"):
        print(out[-3000:])
    return result


def run_trainer(work: Path, steps: int, compile_: bool) -> dict[str, Any]:
    name = "trainer-bf16" + ("-compile" if compile_ else "")
    root = work / "runs" / name
    cmd = [sys.executable, str(HERE / "train_trainer_worker.py"), "--work", str(work), "--out", str(root / "out"),
           "--steps", str(steps), "--batch", str(BATCH), "--threads", str(THREADS), "--lr", str(OPTIM["lr"]),
           "--betas", *map(str, OPTIM["betas"]), "--weight-decay", str(OPTIM["weight_decay"]),
           "--warmup", str(OPTIM["warmup_steps"]), "--min-lr-ratio", str(OPTIM["min_lr_ratio"])]
    cmd += ["--compile"] if compile_ else []
    spawned = time.time()
    wall, out, _ = timed(cmd, fresh_env(root / "inductor-cache", THREADS), name)
    worker = json.loads(out.strip().splitlines()[-1] if out.strip().endswith("}") else
                        next(x for x in reversed(out.splitlines()) if x.startswith("{")))
    step_s = span_median(worker["step_seconds"], warm(steps))
    result = {"config": name, "wall_s": wall, "tokens_per_second": steps * BATCH * SEQ / wall, "step_s": step_s,
              "steady_tokens_per_second": BATCH * SEQ / step_s, "parameters": worker["parameters"],
              "startup_s": wall - steps * step_s, "losses": worker["losses"], "optimizer": worker["optimizer"],
              "attention": worker["attention"],
              "phases": {"until_train_call_s": worker["train_call"] - spawned,
                         "until_step_1_s": worker["step_ends"][0] - spawned,
                         "until_step_10_s": worker["step_ends"][min(9, steps - 1)] - spawned,
                         f"until_step_{steps}_s": worker["step_ends"][-1] - spawned,
                         "after_last_step_s": wall - (worker["step_ends"][-1] - spawned)}}
    log(f"{name}: {wall:.1f} s wall, {result['tokens_per_second']:.0f} tokens/s whole run, step "
        f"{step_s * 1e3:.0f} ms ({result['steady_tokens_per_second']:.0f} tokens/s), ~{result['startup_s']:.1f} s "
        f"beyond steady steps, losses {[round(x, 2) for x in worker['losses']]}; {phases(result)}")
    return result


def checkpoint_speed(work: Path, data: dict[str, Any]) -> dict[str, Any]:
    """Our model + AdamW state after one step: async save blocking time, sync save and restore rates."""
    import torch

    from pretrain.config import validate
    from pretrain.model.build import build_model
    from pretrain.train.checkpoint import CheckpointManager
    from pretrain.train.optim import build_optimizer
    from pretrain.train.schedule import build_scheduler

    torch.set_num_threads(THREADS)
    warnings.filterwarnings("ignore", message=".*assuming the intent is to (save|load) in a single process.*")
    recipe = validate(recipe_tree(work, 10, 1, False))
    model = build_model(recipe.model, VOCAB, data["eos"], data["pad"], 0)
    optimizer = build_optimizer(model, recipe.train)
    scheduler = build_scheduler(optimizer, recipe.train)
    windows = torch.from_numpy(np.load(work / "windows.npy")[:BATCH].astype(np.int64))
    model(input_ids=windows[:, :-1], labels=windows[:, :-1]).loss.backward()
    optimizer.step()
    scheduler.step()
    tensors = [*model.state_dict().values(),
               *(v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v))]
    gb = sum(t.numel() * t.element_size() for t in tensors) / 1e9

    blocks, totals = [], []
    manager = CheckpointManager(str(work / "ckpt-async"), keep=1, asynchronous=True)
    for step in (1, 2, 3):  # as in the loop: save, the next step's forward + backward, wait for the copy, update
        t = time.perf_counter()
        manager.save(step, model, optimizer, scheduler, {})
        blocked = time.perf_counter() - t
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=windows[:, :-1], labels=windows[:, :-1]).loss
        loss.backward()
        t_wait = time.perf_counter()
        manager.wait_staged()
        blocks.append(blocked + time.perf_counter() - t_wait)
        optimizer.step()
        manager.finish()
        totals.append(time.perf_counter() - t)
    manager.close()
    sync = CheckpointManager(str(work / "ckpt-sync"), keep=1)
    saves = []
    for step in (1, 2, 3):
        t = time.perf_counter()
        sync.save(step, model, optimizer, scheduler, {})
        saves.append(time.perf_counter() - t)
    loads = []
    for _ in range(3):
        t = time.perf_counter()
        sync.restore(model, optimizer, scheduler)
        loads.append(time.perf_counter() - t)
    result = {"checkpoint_block_s_per_gb": statistics.median(blocks) / gb,
              "checkpoint_block_s_per_gb_max": max(blocks) / gb, "checkpoint_gb": gb, "checkpoint_block_s": blocks,
              "checkpoint_async_total_s": totals,
              "checkpoint_save_gb_per_s": gb / statistics.median(saves),
              "checkpoint_load_gb_per_s": gb / statistics.median(loads)}
    log(f"checkpoint: {gb:.3f} GB; async save blocks {[round(b, 3) for b in blocks]} s "
        f"({result['checkpoint_block_s_per_gb']:.3f} s/GB, median), done after {[round(x, 2) for x in totals]} s; "
        f"sync save {result['checkpoint_save_gb_per_s']:.2f} GB/s, load {result['checkpoint_load_gb_per_s']:.2f} GB/s")
    return result


# ---------------------------------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200, help="steps of every run (fewer while developing)")
    p.add_argument("--configs", default=HEADLINE,
                   help=f"our configurations to run, comma-separated, or 'all' ({', '.join(CONFIGS)}); the "
                        f"headline is {HEADLINE} when it runs, else the first")
    p.add_argument("--trainer", default="bf16,bf16-compile", help="anchor variants (bf16, bf16-compile, none)")
    p.add_argument("--skip-checkpoint", action="store_true")
    p.add_argument("--keep", help="build everything in this folder and keep it (default: a temp dir)")
    args = p.parse_args(argv)
    names = list(CONFIGS) if args.configs == "all" else args.configs.split(",")
    unknown = set(names) - set(CONFIGS)
    if unknown:
        p.error(f"unknown configurations {sorted(unknown)}; known: {list(CONFIGS)}")
    headline = HEADLINE if HEADLINE in names else names[0]
    anchors = [] if args.trainer == "none" else args.trainer.split(",")

    with tempfile.TemporaryDirectory(prefix="train-bench-") as tmp:
        work = Path(args.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        data = build_data(work, args.steps)
        parameters = write_anchor_config(work, data)
        log(f"model: {parameters:,} parameters ({MODEL}, vocabulary {VOCAB}, tied embeddings)")
        flops_before = matmul_flops(THREADS)
        log(f"bf16 4096 x 4096 matmul on {THREADS} threads: {flops_before / 1e9:.0f} GFLOP/s")

        ours: dict[str, dict[str, Any]] = {}
        trainer: dict[str, dict[str, Any]] = {}
        for name in names:  # alternate sides so a noisy minute hurts neither alone
            ours[name] = run_ours(work, data, name, args.steps)
            if anchors:
                variant = anchors.pop(0)
                trainer[variant] = run_trainer(work, args.steps, variant.endswith("compile"))
        for variant in anchors:
            trainer[variant] = run_trainer(work, args.steps, variant.endswith("compile"))
        ckpt = {} if args.skip_checkpoint else checkpoint_speed(work, data)
        flops_after = matmul_flops(THREADS)
        log(f"matmul again after the runs: {flops_after / 1e9:.0f} GFLOP/s (noise check)")

    mine = ours[headline]
    for side in [*ours.values(), *trainer.values()]:
        if side["parameters"] != parameters:
            raise RuntimeError(f"{side['config']}: {side['parameters']:,} parameters, expected {parameters:,}")
    best = max(trainer.values(), key=lambda r: r["tokens_per_second"]) if trainer else None
    flops = max(flops_before, flops_after)  # the better probe: noise from elsewhere only ever slows a probe down
    mfu = mine["steady_tokens_per_second"] * mine["flops_per_token"] / flops
    def per_side(key: str, name: str | None = None, scale: float = 1.0, digits: int | None = None) -> dict:
        """``key`` of ours as ``name``, then of each Trainer variant as ``trainer_<variant>_<name>``."""
        name = name or key
        sides = {name: mine, **{f"trainer_{v.replace('-', '_')}_{name}": side for v, side in trainer.items()}}
        return {k: round(side[key] * scale, digits) for k, side in sides.items()}

    result: dict[str, Any] = {
        "vs_trainer": round(mine["tokens_per_second"] / best["tokens_per_second"], 3) if best else None,
        "mfu": round(mfu, 3),
        "steady_state_vs_trainer": round(best["step_s"] / mine["step_s"], 3) if best else None,  # same variant
        **{f"steady_state_vs_trainer_{k.replace('-', '_')}": round(v["step_s"] / mine["step_s"], 3)
           for k, v in trainer.items()},
        **per_side("tokens_per_second"),
        "trainer_best": best["config"] if best else None,
        **per_side("steady_tokens_per_second"),
        **per_side("step_s", "step_ms", 1e3, 1),
        **per_side("wall_s", digits=1),
        **per_side("startup_s", digits=1),
        "matmul_bf16_flops": round(flops),
        "matmul_bf16_flops_probes": [round(flops_before), round(flops_after)],
        "flops_per_token": mine["flops_per_token"], "engine_mfu": mine["engine_mfu"],
        "ours_config": headline,
        "ours_configs": {k: {"tokens_per_second": round(v["tokens_per_second"]), "step_ms": round(v["step_s"] * 1e3, 1),
                             "wall_s": round(v["wall_s"], 1), "startup_s": round(v["startup_s"], 1),
                             "mfu": round(v["steady_tokens_per_second"] * v["flops_per_token"] / flops, 3)}
                         for k, v in ours.items()},
        **{k: (round(v, 4) if isinstance(v, float) else [round(x, 4) for x in v]) for k, v in ckpt.items()},
        "parameters": parameters, "steps": args.steps, "batch": BATCH, "seq_len": SEQ, "vocab_size": VOCAB,
        "threads": THREADS,
        "phases": {side["config"]: {k: round(v, 1) for k, v in side["phases"].items() if v is not None}
                   for side in [mine, *trainer.values()]},
        "loss": [round(mine["first_loss"], 3), mine["last_loss"]],
        "trainer_loss": {k: v["losses"][-1:] for k, v in trainer.items()},
        "trainer_optimizer": best["optimizer"] if best else None, "goals": GOALS, "cpus": os.cpu_count(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
