"""Plan: resolve the recipe's sources into input partitions, one ``ingest`` task each.

Built-in sources are materialized here (the pydoc WARC files), so every later step reads ordinary
files. A partition is small (source name, index, count); the ingest task lists its own files.
"""

from __future__ import annotations

from typing import Any

from pretrain.config import BUILTIN_PREFIX, Recipe, SourceConfig, fingerprint
from pretrain.data import corpus
from pretrain.manifest import Manifest, reuse


def source_location(recipe: Recipe, src: SourceConfig) -> str:
    """Where a source's files are: its URI, or the folder a built-in source is built into."""
    if src.uri == BUILTIN_PREFIX + "stdlib":
        return corpus.stdlib_dir()
    if src.uri == BUILTIN_PREFIX + "pydoc":
        return recipe.url("corpus", src.name)
    return src.uri


def plan(recipe: Recipe) -> Manifest:
    root = recipe.url("plan")
    fp = fingerprint([s.model_dump() for s in recipe.sources], corpus.python_version())
    if (done := reuse(root, fp)) is not None:
        return done
    partitions: list[dict[str, Any]] = []
    built = {}
    for src in recipe.sources:
        if src.uri == BUILTIN_PREFIX + "pydoc":
            out = source_location(recipe, src)
            built[src.name] = corpus.write_pydoc_warcs(out, pages=src.builtin_pages, parts=src.partitions)
        partitions += [{"source": src.name, "index": i, "count": src.partitions} for i in range(src.partitions)]
    result = Manifest(
        kind="plan", root=root, fingerprint=fp,
        stats={"sources": len(recipe.sources), "partitions": len(partitions)},
        config={"sources": [s.model_dump() for s in recipe.sources]},
        extra={"partitions": partitions, "built": built},
    )
    result.save()
    return result
