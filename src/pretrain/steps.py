"""Run the steps in-process, in DAG order, without KFP: the same library calls the components make.

Used by the CLI's ``data``/``train``/``export``/``eval`` commands, by notebooks and by tests; each step
reuses finished work, so running a later step after the pipeline ran is cheap.
"""

from __future__ import annotations

from pretrain.config import Recipe
from pretrain.manifest import Manifest


def data(recipe: Recipe) -> Manifest:
    """plan -> ingest -> filter (per partition) -> dedup -> tokenize; returns the tokens manifest."""
    from pretrain.data.dedup import dedup
    from pretrain.data.filters import filter_shard
    from pretrain.data.ingest import ingest
    from pretrain.data.plan import plan
    from pretrain.data.tokenize import tokenize

    partitions = plan(recipe).extra["partitions"]
    filtered = [filter_shard(recipe, ingest(recipe, part)) for part in partitions]
    return tokenize(recipe, dedup(recipe, filtered))


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
