"""Filter: quality rules over a documents shard.

Each rule is a small named check; a document is dropped by the first rule it fails and written to a
``dropped`` shard with that ``reason``, so every rule can be audited. Lengths are computed with
Arrow compute over the whole batch; the line-level rules are plain Python per document.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable

import pyarrow as pa
import pyarrow.compute as pc

from pretrain import storage
from pretrain.config import FilterConfig, Recipe, fingerprint
from pretrain.data.documents import DROPPED_SCHEMA, SCHEMA, ShardWriter, iter_batches
from pretrain.data.readers.base import Partition
from pretrain.manifest import Manifest, reuse


@dataclasses.dataclass(frozen=True)
class Rule:
    name: str
    keep: Callable[[str], bool]


def alnum_fraction(text: str) -> float:
    return sum(ch.isalnum() for ch in text) / max(1, len(text))


def mean_line_length(text: str) -> float:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return sum(map(len, lines)) / max(1, len(lines))


def duplicate_line_fraction(text: str) -> float:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return 1.0 - len(set(lines)) / len(lines) if lines else 0.0


def line_rules(cfg: FilterConfig) -> list[Rule]:
    return [
        Rule("too_few_words", lambda t: len(t.split()) >= cfg.min_words),
        Rule("low_alnum_fraction", lambda t: alnum_fraction(t) >= cfg.min_alnum_fraction),
        Rule("long_lines", lambda t: mean_line_length(t) <= cfg.max_mean_line_length),
        Rule("repeated_lines", lambda t: duplicate_line_fraction(t) <= cfg.max_duplicate_line_fraction),
    ]


def reasons(batch: pa.RecordBatch, cfg: FilterConfig, rules: list[Rule]) -> list[str | None]:
    """The drop reason of each document in ``batch`` (None = keep)."""
    lengths = pc.utf8_length(batch.column("text")).to_pylist()
    out: list[str | None] = []
    for text, n in zip(batch.column("text").to_pylist(), lengths, strict=True):
        if n < cfg.min_chars:
            out.append("too_short")
        elif n > cfg.max_chars:
            out.append("too_long")
        else:
            out.append(next((r.name for r in rules if not r.keep(text)), None))
    return out


def filter_shard(recipe: Recipe, documents: Manifest) -> Manifest:
    """Split each shard of ``documents`` into kept and dropped shards under ``filtered/``."""
    cfg = recipe.filter
    rules = line_rules(cfg)
    part = Partition.from_dict(documents.extra["partition"])
    kept_url = recipe.url("filtered", "kept", part.source, f"{part.shard_name}.parquet")
    dropped_url = recipe.url("filtered", "dropped", part.source, f"{part.shard_name}.parquet")
    manifest_url = kept_url.replace(".parquet", ".manifest.json")
    fp = fingerprint(cfg.model_dump(), documents.fingerprint)
    if (done := reuse(manifest_url, fp)) is not None:
        return done
    counts: collections.Counter = collections.Counter()
    total = 0
    with ShardWriter(kept_url, SCHEMA) as kept, ShardWriter(dropped_url, DROPPED_SCHEMA) as dropped:
        for shard in documents.shards:
            for batch in iter_batches(shard.url):
                why = reasons(batch, cfg, rules)
                total += batch.num_rows
                mask = pa.array([r is None for r in why])
                table = pa.Table.from_batches([batch])
                kept.write_table(table.filter(mask))
                drop = table.append_column("reason", pa.array(why, pa.string()))
                dropped.write_table(drop.filter(pc.invert(mask)))
                counts.update(r for r in why if r is not None)
        kept_shard, dropped_shard = kept.close(), dropped.close()
    result = Manifest(
        kind="filtered", root=storage.join(recipe.root, "filtered"), fingerprint=fp, shards=[kept_shard],
        stats={"documents_in": total, "kept": kept_shard.rows, "dropped": dropped_shard.rows,
               "dropped_by_reason": dict(counts)},
        config=cfg.model_dump(), extra={"dropped": [dataclasses.asdict(dropped_shard)],
                                        "partition": documents.extra["partition"], "ingest_stats": documents.stats},
    )
    result.save(manifest_url)
    return result
