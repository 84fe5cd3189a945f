"""The train step as the pipeline calls it: launch the job, then describe its checkpoints.

``train.launcher`` local runs torchrun here (in the KFP step's pod on a cluster); pytorchjob and trainjob
create a cluster job named after the KFP run (``run_id``), so a retried step attaches to the job already
running instead of starting a second one. ``cleanup_step`` is the pipeline's exit handler.
"""

from __future__ import annotations

import yaml

from pretrain import storage
from pretrain.config import Recipe, fingerprint
from pretrain.launch.local import LocalJob, run
from pretrain.manifest import Manifest, Shard, reuse
from pretrain.train.checkpoint import CheckpointManager, checkpoint_fingerprint, step_name


def write_recipe(recipe: Recipe) -> str:
    """The resolved recipe, at the run root, where the training entry point reads it."""
    url = recipe.url("recipe.yaml")
    storage.write_text(url, yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
    return url


# Where and how training runs, not what it trains: a finished run is reused whichever launched it.
PLACEMENT_KEYS = {"launcher", "resources", "elastic"}


def train_step(recipe: Recipe, tokens: Manifest, run_id: str = "manual") -> Manifest:
    root = recipe.url("train")
    fp = fingerprint(recipe.model.model_dump(), recipe.train.model_dump(exclude=PLACEMENT_KEYS), recipe.seed,
                     tokens.fingerprint)
    if (done := reuse(root, fp)) is not None:
        return done
    config_url = write_recipe(recipe)
    if recipe.train.launcher == "local":
        run(LocalJob(config_url, recipe.train.nnodes, recipe.train.nproc_per_node, recipe.train.threads_per_process))
    else:
        from pretrain.launch.cluster import run_cluster_job

        run_cluster_job(recipe, run_id)  # create or attach, wait, stream rank-0 logs; JobFailed on failure
    summary = storage.read_json(storage.join(root, "summary.json"))
    ckpt_root = recipe.url("checkpoints")
    ckpt = CheckpointManager(ckpt_root, recipe.train.keep_checkpoints,
                             checkpoint_fingerprint(recipe.model.model_dump(), recipe.seed, tokens.fingerprint))
    steps = ckpt.steps()
    if not steps or steps[-1] != recipe.train.max_steps:
        raise RuntimeError(f"training ended without a committed checkpoint at step {recipe.train.max_steps}")
    history = summary["history"]
    evals = [r for r in history if "val_loss" in r]
    losses = [r for r in history if "loss" in r]
    stats = {
        "steps": summary["step"], "parameters": summary["parameters"], "world_size": summary["world_size"],
        "initial_val_loss": evals[0]["val_loss"] if evals else None,
        "final_val_loss": evals[-1]["val_loss"] if evals else None,
        "final_train_loss": losses[-1]["loss"] if losses else None,
        # for the model card's compute and hardware lines
        **{k: summary.get(k) for k in ("device", "device_name", "wall_seconds", "flops_per_token", "flops_per_sample",
                                       "peak_flops_source") if summary.get(k) is not None},
    }
    if recipe.modality == "text":
        stats["tokens_per_second"] = losses[-1].get("tokens_per_second") if losses else None
    else:  # image objectives: samples, not tokens; in-batch top-1 retrieval accuracy
        stats["samples_per_second"] = losses[-1].get("samples_per_second") if losses else None
        stats["initial_val_accuracy"] = evals[0].get("val_accuracy") if evals else None
        stats["final_val_accuracy"] = evals[-1].get("val_accuracy") if evals else None
    shards = [Shard(url=storage.join(ckpt_root, step_name(s)), rows=s, bytes=0, meta={"step": s}) for s in steps]
    result = Manifest(kind="checkpoints", root=root, fingerprint=fp, shards=shards, stats=stats,
                      config=recipe.train.model_dump(),
                      extra={"latest": shards[-1].url, "metrics": storage.join(root, "metrics.jsonl"),
                             "history": history,
                             "trained_tokens_by_source": summary.get("trained_tokens_by_source", {}),
                             **({"trained_samples_by_source": summary["trained_samples_by_source"]}
                                if "trained_samples_by_source" in summary else {})})
    result.save()
    return result


def cleanup_step(recipe: Recipe, run_id: str, state: str) -> str:
    """The pipeline's exit handler: when a run with a cluster launcher did not succeed (failed, cancelled),
    delete its training job so no GPU pods outlive the run. Says what it did."""
    if recipe.train.launcher == "local":
        return "clean-up: nothing to do (train.launcher local)"
    if state == "SUCCEEDED":
        return "clean-up: the run succeeded; its training job is kept"
    from pretrain.launch.cluster import delete_cluster_job
    from pretrain.launch.render import job_name

    name = job_name(recipe, run_id)
    deleted = delete_cluster_job(recipe, run_id)
    return f"clean-up: run {state}: {'deleted' if deleted else 'no'} training job {name}"
