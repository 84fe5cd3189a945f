"""Run the steps in-process, in DAG order, without KFP: the same library calls the components make.

Used by the CLI's ``data``/``train``/``export``/``eval`` commands, by notebooks and by tests; each step
reuses finished work, so running a later step after the pipeline ran is cheap.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import multiprocessing
import os
from collections.abc import Iterator

from pretrain.config import Recipe
from pretrain.manifest import Manifest

_DEPTH = 0  # nested step calls (train runs data first): the outermost one is the run


@contextlib.contextmanager
def _run(recipe: Recipe) -> Iterator[None]:
    """At the end of the outermost step call (the run, as far as this process knows), delete the data-step
    metrics pushed to the Pushgateway, so finished runs do not linger there as if still current."""
    global _DEPTH
    _DEPTH += 1
    try:
        yield
    finally:
        _DEPTH -= 1
        if _DEPTH == 0 and recipe.observe.pushgateway:
            from pretrain.observe.pushgateway import delete_run

            delete_run(recipe.observe.pushgateway, recipe.name)


def _push(recipe: Recipe, step: str, manifests: list[Manifest]) -> None:
    """A finished data step's counts to the Pushgateway, when one is configured (a warning if it fails)."""
    if recipe.observe.pushgateway:
        from pretrain.observe.pushgateway import push_step

        push_step(recipe.observe.pushgateway, recipe.name, step, [m.stats for m in manifests])


def ingest_and_filter(recipe_json: str, partition: dict) -> Manifest:
    """One partition's ingest and filter: the unit of work of the local process pool."""
    from pretrain.config import from_json
    from pretrain.data.filters import filter_shard
    from pretrain.data.ingest import ingest

    recipe = from_json(recipe_json)
    return filter_shard(recipe, ingest(recipe, partition))


def data(recipe: Recipe, workers: int | None = None) -> Manifest:
    """plan -> ingest -> filter (partitions in a process pool, all cores) -> dedup -> tokenize.

    Returns the tokens manifest. ``workers=1`` runs every partition in this process. With
    ``observe.pushgateway`` set, each stage's counts are pushed when it ends (filter: all partitions together).
    """
    from pretrain.data.dedup import dedup
    from pretrain.data.plan import plan
    from pretrain.data.tokenize import tokenize
    from pretrain.observe.progress import Progress

    with _run(recipe):
        partitions = plan(recipe).extra["partitions"]
        workers = min(workers or os.cpu_count() or 1, max(1, len(partitions)))
        filtered: list[Manifest] = []
        with Progress("ingest+filter", len(partitions), mode=recipe.observe.progress,
                      interval=recipe.observe.progress_seconds, unit="partition") as progress:
            if workers == 1:
                for part in partitions:
                    filtered.append(ingest_and_filter(recipe.to_json(), part))
                    progress.update()
            else:
                # spawn, not fork: the parent may hold threads (s3fs' event loop) that a forked child would inherit
                ctx = multiprocessing.get_context("spawn")
                with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                    for done in pool.map(ingest_and_filter, itertools.repeat(recipe.to_json()), partitions):
                        filtered.append(done)
                        progress.update()
        _push(recipe, "filter", filtered)
        deduped = dedup(recipe, filtered, workers=workers)
        _push(recipe, "dedup", [deduped])
        tokens = tokenize(recipe, deduped, workers=workers)
        _push(recipe, "tokenize", [tokens])
        return tokens


def train(recipe: Recipe) -> Manifest:
    from pretrain.train.step import train_step

    with _run(recipe):
        return train_step(recipe, data(recipe))


def export(recipe: Recipe) -> Manifest:
    from pretrain.model.export import export_model

    with _run(recipe):
        return export_model(recipe, train(recipe), Manifest.load(recipe.url("tokens")))


def evaluate(recipe: Recipe) -> Manifest:
    from pretrain.evaluate.step import evaluate as run_evaluate

    with _run(recipe):
        model = export(recipe)
        return run_evaluate(recipe, model, Manifest.load(recipe.url("tokens")), Manifest.load(recipe.url("train")))
