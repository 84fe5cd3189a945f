"""Plan: list each source's inputs once and split them into partitions, one ``ingest`` task each.

Built-in sources are materialized here (the pydoc WARC files, the rendered shapes), so every later
step reads ordinary files. Each reader decides how its files split (whole files, byte ranges at
record boundaries, row groups, streams, repository or image-folder buckets). Partitions are keyed
by file and range, never re-balanced: adding a file adds partitions and leaves the others, and
their finished shards, as they were.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from pretrain.config import BUILTIN_PREFIX, Recipe, SourceConfig, fingerprint
from pretrain.data import corpus
from pretrain.data.readers import reader
from pretrain.data.readers.base import Partition
from pretrain.manifest import Manifest


def source_location(recipe: Recipe, src: SourceConfig) -> str:
    """Where a source's files are: its URI, or the folder a built-in source is built into."""
    if src.uri == BUILTIN_PREFIX + "stdlib":
        return corpus.stdlib_dir()
    if src.uri in (BUILTIN_PREFIX + "pydoc", BUILTIN_PREFIX + "shapes"):
        return recipe.url("corpus", src.name)
    return src.uri


def plan_source(recipe: Recipe, src: SourceConfig) -> list[Partition]:
    """The partitions of one source, with ``max_documents`` spread over them as per-partition limits."""
    location = source_location(recipe, src)
    if src.uri == BUILTIN_PREFIX + "pydoc":
        corpus.write_pydoc_warcs(location, pages=src.builtin_pages, parts=src.partitions)
    elif src.uri == BUILTIN_PREFIX + "shapes":
        from pretrain.data.samples import shapes

        shapes.write_builtin(location, src.builtin_images)
    parts = reader(src.format).plan(src, location)
    if src.max_documents and parts and src.format != "code":  # code limits the files it lists
        limit = math.ceil(src.max_documents / len(parts))
        parts = [dataclasses.replace(p, limit=limit) for p in parts]
    return parts


def plan(recipe: Recipe) -> Manifest:
    """List every source and write ``plan/_MANIFEST.json`` (its ``extra.partitions`` feeds the fan-out).

    Always re-lists: a listing is cheap next to ingest, and reusing an old plan would hide new files.
    """
    root = recipe.url("plan")
    partitions: list[dict[str, Any]] = []
    per_source: dict[str, int] = {}
    for src in recipe.sources:
        parts = plan_source(recipe, src)
        per_source[src.name] = len(parts)
        partitions += [p.to_dict() for p in parts]
    keys = [(p["source"], Partition.from_dict(p).key) for p in partitions]
    if len(set(keys)) != len(keys):
        raise RuntimeError("plan produced two partitions with the same key")  # a reader bug, never silent
    result = Manifest(
        kind="plan", root=root, fingerprint=fingerprint([s.model_dump() for s in recipe.sources], keys),
        stats={"sources": len(recipe.sources), "partitions": len(partitions), "partitions_by_source": per_source},
        config={"sources": [s.model_dump() for s in recipe.sources]},
        extra={"partitions": partitions},
    )
    result.save()
    return result
