"""Ingest: read one partition of a raw source into a documents shard (image sources: a samples shard).

The format's reader (``pretrain.data.readers``) streams document rows and counts every record it
does not turn into a document, by reason. The shard is written atomically and its manifest, written
last, is the partition's completion marker: a re-run redoes only partitions without one.
"""

from __future__ import annotations

from typing import Any

from pretrain.config import Recipe, fingerprint
from pretrain.data.documents import SAMPLE_SCHEMA, SCHEMA, ShardWriter
from pretrain.data.readers import reader
from pretrain.data.readers.base import Partition, ReadStats
from pretrain.manifest import Manifest, reuse


class LedgerError(RuntimeError):
    """A reader's counts do not add up: a document would be lost without a trace."""


def shard_url(recipe: Recipe, part: Partition) -> str:
    return recipe.url("documents", part.source, f"{part.shard_name}.parquet")


def ingest(recipe: Recipe, partition: dict[str, Any]) -> Manifest:
    """Read ``partition`` (a :class:`Partition` as a dict) into ``documents/<source>/<part>.parquet``."""
    part = Partition.from_dict(partition)
    src = next((s for s in recipe.sources if s.name == part.source), None)
    if src is None:
        raise ValueError(f"partition names unknown source {part.source!r}")
    url = shard_url(recipe, part)
    manifest_url = url.replace(".parquet", ".manifest.json")
    images = src.has_images  # samples: the stored image depends on recipe.images too
    fp = fingerprint("ingest", src.model_dump(), part.to_dict(), *([recipe.images.model_dump()] if images else []))
    if (done := reuse(manifest_url, fp)) is not None:
        return done
    stats = ReadStats()
    written = chars = image_bytes = 0
    rows = reader(src.format).read(src, part, stats, **({"images": recipe.images} if images else {}))
    try:
        with ShardWriter(url, SAMPLE_SCHEMA if images else SCHEMA) as writer:
            for row in rows:
                writer.write_rows([row])
                written += 1
                chars += len(row["text"])  # samples: the caption
                if images:
                    image_bytes += len(row["image"])
                if part.limit and written >= part.limit:
                    break
            skipped = sum(stats.skipped.values())
            if stats.records != written + skipped:  # checked before the shard is committed
                raise LedgerError(f"{src.format} reader of {part.key}: {stats.records} records read but {written} "
                                  f"written + {skipped} skipped")
            shard = writer.close()
    finally:
        rows.close()
    result = Manifest(
        kind="documents", root=recipe.url("documents", src.name), fingerprint=fp, shards=[shard],
        stats={**stats.to_dict(), "documents": written, "chars": chars,
               **({"images": written, "image_bytes": image_bytes} if images else {})},
        config=src.model_dump(), extra={"partition": part.to_dict(), "errors": stats.errors},
    )
    result.save(manifest_url)
    return result
