"""Run the steps in-process, in DAG order, without KFP: the same library calls the components make.

Used by the CLI's ``data``/``train``/``export``/``eval`` commands, by notebooks and by tests; each step
reuses finished work, so running a later step after the pipeline ran is cheap.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import multiprocessing
import os

from pretrain.config import Recipe
from pretrain.manifest import Manifest


def ingest_and_filter(recipe_json: str, partition: dict) -> Manifest:
    """One partition's ingest and filter: the unit of work of the local process pool."""
    from pretrain.config import from_json
    from pretrain.data.filters import filter_shard
    from pretrain.data.ingest import ingest

    recipe = from_json(recipe_json)
    return filter_shard(recipe, ingest(recipe, partition))


def data(recipe: Recipe, workers: int | None = None) -> Manifest:
    """plan -> ingest -> filter (partitions in a process pool, all cores) -> dedup -> tokenize.

    Returns the tokens manifest. ``workers=1`` runs every partition in this process.
    """
    from pretrain.data.dedup import dedup
    from pretrain.data.plan import plan
    from pretrain.data.tokenize import tokenize

    partitions = plan(recipe).extra["partitions"]
    workers = min(workers or os.cpu_count() or 1, max(1, len(partitions)))
    if workers == 1:
        filtered = [ingest_and_filter(recipe.to_json(), part) for part in partitions]
    else:
        # spawn, not fork: the parent may hold threads (s3fs' event loop) that a forked child would inherit stuck.
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            filtered = list(pool.map(ingest_and_filter, itertools.repeat(recipe.to_json()), partitions))
    return tokenize(recipe, dedup(recipe, filtered, workers=workers), workers=workers)


def train(recipe: Recipe) -> Manifest:
    from pretrain.train.step import train_step

    return train_step(recipe, data(recipe))


def export(recipe: Recipe) -> Manifest:
    from pretrain.model.export import export_model

    return export_model(recipe, train(recipe), Manifest.load(recipe.url("tokens")))


def evaluate(recipe: Recipe) -> Manifest:
    from pretrain.evaluate.step import evaluate as run_evaluate

    model = export(recipe)
    return run_evaluate(recipe, model, Manifest.load(recipe.url("tokens")), Manifest.load(recipe.url("train")))
