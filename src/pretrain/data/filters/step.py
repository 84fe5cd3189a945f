"""The filter step: one partition's documents -> kept and dropped shards under ``filtered/``, and stats.

Each document goes through its source's profile (see ``profiles``; image samples: ``images``, the image rules
then the caption profile, in the samples schema): rules drop it (the first that trips
names the ``reason`` and the ``value``, written with the document to the dropped shard), transforms
rewrite a kept one (C4 boilerplate lines, PII). Stats count documents and bytes per rule, so every
rule's cost in data is visible; a rule that fails on a document is counted in ``rule_errors`` and
skipped for it, never a crash mid-shard or a silent drop.
"""

from __future__ import annotations

import collections
import dataclasses
import operator
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from pretrain import storage
from pretrain.config import FilterConfig, Recipe, RecipeError, fingerprint
from pretrain.data.documents import (
    DROPPED_SAMPLE_SCHEMA,
    DROPPED_SCHEMA,
    SAMPLE_SCHEMA,
    SCHEMA,
    ShardWriter,
    iter_batches,
)
from pretrain.data.filters import images, profiles
from pretrain.data.filters.base import Doc, Rule, Step, fmt
from pretrain.data.readers.base import Partition
from pretrain.manifest import Manifest, reuse


@dataclasses.dataclass
class Verdict:
    """What the chain decided for one document."""

    reason: str | None = None
    value: str | None = None
    text: str | None = None  # the rewritten text of a kept document (None: unchanged)
    language: tuple[str, float] | None = None


@dataclasses.dataclass
class Stats:
    documents_in: int = 0
    kept: int = 0
    dropped: int = 0
    bytes_in: int = 0
    bytes_kept: int = 0  # UTF-8 bytes of the kept documents as written (after rewrites): the data funnel's bytes
    dropped_by_reason: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    bytes_dropped_by_reason: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    transformed: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    bytes_removed_by_transform: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    lines_removed: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    pii_redacted: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    languages: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    rule_errors: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def as_dict(self) -> dict[str, Any]:
        items = ((f.name, getattr(self, f.name)) for f in dataclasses.fields(self))
        return {k: dict(v) if isinstance(v, collections.Counter) else v for k, v in items}


class Chain:
    """A profile's steps applied to one document at a time, counting into ``stats``."""

    def __init__(self, steps: list[Step], stats: Stats, language: bool = False) -> None:
        self.steps = steps
        self.stats = stats
        self.language = language

    def judge(self, doc: Doc) -> Verdict:
        verdict = Verdict()
        if self.language:
            verdict.language = self._guarded("language", operator.attrgetter("language"), doc, None)
        original = doc
        for step in self.steps:
            if isinstance(step, Rule):
                value = self._guarded(step.name, step.judge, doc, None)
                if value is not None:
                    return dataclasses.replace(verdict, reason=step.name, value=fmt(value))
                continue
            text, counts = self._guarded(step.name, step.apply, doc, (None, {}))
            if text is None or text == doc.text:
                continue
            self.stats.transformed[step.name] += 1
            self.stats.bytes_removed_by_transform[step.name] += len(doc.text.encode()) - len(text.encode())
            if step.name == "pii":
                self.stats.pii_redacted.update(counts)
            elif "lines" in counts:
                self.stats.lines_removed[step.name] += counts["lines"]
            doc = doc.with_text(text)
        if doc is not original:
            verdict.text = doc.text
        return verdict

    def _guarded(self, name: str, call, doc: Doc, default):
        try:
            return call(doc)
        except Exception:  # a rule's bug must not drop the document or stop the shard: count it, skip it
            self.stats.rule_errors[name] += 1
            return default


def filter_batch(batch: pa.RecordBatch, chain: Chain) -> tuple[pa.Table, pa.Table]:
    """(kept, dropped) tables of one batch; kept rows carry rewritten text and the language in ``meta``."""
    stats = chain.stats
    texts = batch.column("text").to_pylist()
    nbytes = pc.binary_length(pc.cast(batch.column("text"), pa.binary())).to_pylist()
    # image samples: a sample's bytes are its stored image's plus its caption's (the data funnel's bytes)
    image_bytes = (pc.binary_length(batch.column("image")).to_pylist() if "image" in batch.schema.names
                   else [0] * len(nbytes))
    metas = batch.column("meta").to_pylist()
    urls = batch.column("url").to_pylist()
    licenses = batch.column("license").to_pylist()
    sizes = (zip(batch.column("width").to_pylist(), batch.column("height").to_pylist(), strict=True)
             if "width" in batch.schema.names else None)  # image samples: the caption's image, original size
    keep: list[bool] = []
    reasons: list[str | None] = []
    values: list[str | None] = []
    out_texts: list[str] = []
    out_metas: list[str] = []
    for text, size, image_size, meta_json, url, lic in zip(texts, nbytes, image_bytes, metas, urls, licenses,
                                                           strict=True):
        size = (size or 0) + (image_size or 0)
        meta = _meta(meta_json)
        if sizes is None:
            doc = Doc(text or "", url=url or "", license=lic or "", meta=meta)
        else:
            width, height = next(sizes)
            doc = images.SampleDoc(text or "", width=width or 0, height=height or 0, url=url or "",
                                   license=lic or "", meta=meta)
        verdict = chain.judge(doc)
        stats.documents_in += 1
        stats.bytes_in += size or 0
        if verdict.language is not None:
            code, score = verdict.language
            meta = {**meta, "lang": code, "lang_score": round(score, 4)}
            meta_json = orjson.dumps(meta).decode()
            stats.languages[code or "unknown"] += 1
        keep.append(verdict.reason is None)
        reasons.append(verdict.reason)
        values.append(verdict.value)
        out_texts.append(verdict.text if verdict.text is not None else text)
        out_metas.append(meta_json)
        if verdict.reason is None:
            stats.kept += 1
            stats.bytes_kept += len(verdict.text.encode()) + (image_size or 0) if verdict.text is not None else size
        else:
            stats.dropped += 1
            stats.dropped_by_reason[verdict.reason] += 1
            stats.bytes_dropped_by_reason[verdict.reason] += size or 0
    table = pa.Table.from_batches([batch])
    mask = pa.array(keep, pa.bool_())
    kept = table.set_column(table.schema.get_field_index("text"), "text", pa.array(out_texts, pa.string()))
    kept = kept.set_column(kept.schema.get_field_index("meta"), "meta", pa.array(out_metas, pa.string()))
    dropped = table.set_column(table.schema.get_field_index("meta"), "meta", pa.array(out_metas, pa.string()))
    dropped = dropped.append_column("reason", pa.array(reasons, pa.string()))
    dropped = dropped.append_column("value", pa.array(values, pa.string()))
    return kept.filter(mask), dropped.filter(pc.invert(mask))


def _meta(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        found = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {}
    return found if isinstance(found, dict) else {}


def chain_for(cfg: FilterConfig, profile: str, stats: Stats | None = None) -> Chain:
    """The rules of ``profile``; ``caption`` (image sources): the image rules, then the caption's."""
    if profile == images.PROFILE:
        return Chain(images.build(cfg), stats or Stats())
    return Chain(profiles.build(cfg, profile), stats or Stats(), language=profiles.wants_language(cfg, profile))


def filter_shard(recipe: Recipe, documents: Manifest) -> Manifest:
    """Split each shard of ``documents`` into kept and dropped shards under ``filtered/``."""
    cfg = recipe.filter
    part = Partition.from_dict(documents.extra["partition"])
    source = next((s for s in recipe.sources if s.name == part.source), None)
    if source is None:
        raise RecipeError(f"sources: no source named {part.source!r} (the partition's source)")
    profile = source.profile
    samples = source.has_images  # image samples: their schema, the image rules and the caption profile
    kept_url = recipe.url("filtered", "kept", part.source, f"{part.shard_name}.parquet")
    dropped_url = recipe.url("filtered", "dropped", part.source, f"{part.shard_name}.parquet")
    manifest_url = kept_url.replace(".parquet", ".manifest.json")
    fp = fingerprint(cfg.model_dump(), profile, profiles.missing(), documents.fingerprint)
    if (done := reuse(manifest_url, fp)) is not None:
        return done
    stats = Stats()
    chain = chain_for(cfg, profile, stats)
    schema, dropped_schema = (SAMPLE_SCHEMA, DROPPED_SAMPLE_SCHEMA) if samples else (SCHEMA, DROPPED_SCHEMA)
    with ShardWriter(kept_url, schema) as kept, ShardWriter(dropped_url, dropped_schema) as dropped:
        for shard in documents.shards:
            for batch in iter_batches(shard.url):
                keep, drop = filter_batch(batch, chain)
                kept.write_table(keep)
                dropped.write_table(drop)
        kept_shard, dropped_shard = kept.close(), dropped.close()
    assert stats.kept == kept_shard.rows and stats.dropped == dropped_shard.rows
    result = Manifest(
        kind="filtered", root=storage.join(recipe.root, "filtered"), fingerprint=fp, shards=[kept_shard],
        stats=stats.as_dict(), config=cfg.model_dump(),
        extra={"dropped": [dataclasses.asdict(dropped_shard)], "profile": profile,
               "rules_missing": profiles.missing(),
               "partition": documents.extra["partition"], "ingest_stats": documents.stats,
               **({"samples": True} if samples else {})},
    )
    result.save(manifest_url)
    return result
