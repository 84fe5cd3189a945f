"""The tokenize step of image runs: deduplicated samples -> train and validation split shards, and their manifest.

The same three stages as text (``pretrain.data.tokenize`` dispatches here when ``recipe.modality`` is not text):

- ``prepare``: for image-text runs, the run's tokenizer (trained on the captions, or loaded from ``tokenizer.path``
  / ``model.init_from``; saved with ``model.seq_len`` as its maximum length); the sorted class labels; the plan;
- ``encode_partition``: one samples shard -> a train and a validation shard (each sample wholly in one, by the hash
  of its id that text runs use), captions encoded in batch, cut to ``seq_len - 1`` tokens, EOS appended; image-text
  runs drop samples without a caption here (counted ``no_caption``);
- ``finish``: per-source counts, the validation check (image-text: at least ``evaluate.retrieval_pool`` samples,
  what a retrieval pool needs), the manifest (``kind="samples"``) where the tokens manifest goes.

Split shards are Parquet (zstd) in row groups of at most ``ROW_GROUP_ROWS`` rows (a loader reads a group at a
time), with the columns of :data:`SPLIT_SCHEMA`. ``label`` indexes ``extra["labels"]`` (-1: none).
"""

from __future__ import annotations

import collections
import dataclasses
import os
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pretrain import storage
from pretrain.config import Recipe, RecipeError, fingerprint, from_json
from pretrain.data.documents import ShardWriter, iter_batches
from pretrain.data.pool import Pool
from pretrain.data.tokenize import PartitionedPlan
from pretrain.manifest import Manifest, Shard, merge_stats, reuse

SPLITS = ("train", "val")
ROW_GROUP_ROWS = 256
SPLIT_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("source", pa.string()),
    ("image", pa.binary()),  # the stored image bytes, as in the samples shards
    ("text", pa.string()),  # the caption ("" when none)
    ("caption", pa.list_(pa.int32())),  # its token ids, at most seq_len - 1 then EOS; [] for image-only runs
    ("label", pa.int32()),  # index into the manifest's extra["labels"]; -1: none
])
READ_COLUMNS = ["id", "source", "image", "text", "label", "date"]


@dataclasses.dataclass
class SamplePlan(PartitionedPlan):
    root: str
    fingerprint: str
    modality: str  # "image" or "image_text"
    tokenizer: str  # the run's tokenizer folder; "" for image-only runs
    tokenizer_hash: str
    vocab_size: int
    eos_id: int | None
    pad_id: int | None
    labels: list[str]  # sorted class labels of the samples that reach the splits
    image_size: int
    partitions: list[dict[str, Any]]  # {"url", "source", "rows"} of each samples shard, in manifest order

    def shard_url(self, split: str, part: int) -> str:
        return storage.join(self.root, split, f"part-{part:05d}.parquet")



def captions(recipe: Recipe) -> bool:
    return recipe.modality == "image_text"


def step_fingerprint(recipe: Recipe, documents: Manifest) -> str:
    """The split's inputs: the samples, the split, the seed, and for image-text runs the tokenizer and caption
    length (an image-only run's split does not depend on them)."""
    text: list[Any] = []
    if captions(recipe):
        from pretrain.data.tokenizer.load import tokenizer_hash, tokenizer_source

        source = tokenizer_source(recipe)
        text = [recipe.tokenizer.model_dump(), tokenizer_hash(source) if source else None, recipe.model.init_from,
                recipe.model.seq_len]
    return fingerprint("samples", recipe.modality, *text, recipe.split.model_dump(), recipe.seed, recipe.images.size,
                       documents.fingerprint)


# -- stage 1: the tokenizer, the labels and the plan -----------------------------------------------------------
def prepare(recipe: Recipe, documents: Manifest, fp: str | None = None) -> SamplePlan:
    """The caption tokenizer (image-text), the labels and the plan; reused when made from the same inputs."""
    root = recipe.url("tokens")
    fp = fp or step_fingerprint(recipe, documents)
    found = SamplePlan.saved(root, fp)
    if found is not None:
        return found
    tok: dict[str, Any] = {"tokenizer": "", "tokenizer_hash": "", "vocab_size": 0, "eos_id": None, "pad_id": None}
    if captions(recipe):
        tok = _tokenizer(recipe, documents)
    partitions = [{"url": s.url, "source": s.meta.get("source", ""), "rows": s.rows} for s in documents.shards]
    plan = SamplePlan(root=root, fingerprint=fp, modality=recipe.modality, labels=_labels(documents, captions(recipe)),
                      image_size=recipe.images.size, partitions=partitions, **tok)
    plan.save()
    return plan


def _tokenizer(recipe: Recipe, documents: Manifest) -> dict[str, Any]:
    """Train the tokenizer on the captions (each source its share), or copy the given one; save it with the run."""
    from pretrain.data.tokenize import _copy_tokenizer
    from pretrain.data.tokenizer.load import (
        load_tokenizer,
        save_tokenizer,
        special_ids,
        tokenizer_hash,
        tokenizer_source,
    )
    from pretrain.data.tokenizer.train import train_tokenizer, training_sample

    tok_url = recipe.url("tokenizer")
    source = tokenizer_source(recipe)
    if source:
        _copy_tokenizer(source, tok_url)
    else:
        weights = recipe.mixture.weights if recipe.tokenizer.sample == "mixture" and recipe.mixture.weights else None
        trained = train_tokenizer(training_sample(documents, recipe.tokenizer.train_chars, weights, recipe.seed),
                                  recipe.tokenizer)
        _end_with_eos(trained)
        save_tokenizer(trained, tok_url, recipe.model.seq_len)
    loaded = load_tokenizer(tok_url)
    ids = special_ids(loaded, tok_url)
    return {"tokenizer": tok_url, "tokenizer_hash": tokenizer_hash(tok_url), "vocab_size": loaded.get_vocab_size(),
            "eos_id": int(ids["eos"]), "pad_id": ids["pad"]}


def _end_with_eos(tok) -> None:
    """The saved caption tokenizer appends EOS (``tokenizer(caption)`` in transformers, truncation keeping room for
    it), as the training captions end: CLIP's text tower pools at the EOS. Training itself encodes without
    special tokens and appends EOS after cutting to ``seq_len - 1``, so the ids are the same either way."""
    from tokenizers.processors import TemplateProcessing

    from pretrain.data.tokenizer.train import EOS

    eos = tok.token_to_id(EOS)
    tok.post_processor = TemplateProcessing(single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}", special_tokens=[(EOS, eos)])


def _labels(documents: Manifest, need_caption: bool) -> list[str]:
    """The sorted non-empty labels of the samples that reach the splits (image-text: those with a caption)."""
    seen: set[str] = set()
    for shard in documents.shards:
        for batch in iter_batches(shard.url, columns=["label", "text"] if need_caption else ["label"]):
            labels = batch.column("label").to_pylist()
            if need_caption:
                texts = batch.column("text").to_pylist()
                labels = [label for label, text in zip(labels, texts, strict=True) if text]
            seen.update(label for label in labels if label)
    return sorted(seen)


def load_plan(recipe: Recipe) -> SamplePlan:
    return SamplePlan.load(recipe.url("tokens"))


# -- stage 2: one partition ------------------------------------------------------------------------------------
class _GroupedWriter:
    """A split shard written in row groups of exactly ``ROW_GROUP_ROWS`` rows (the last one: the rest)."""

    def __init__(self, url: str) -> None:
        self.writer = ShardWriter(url, SPLIT_SCHEMA)
        self.pending: list[pa.Table] = []
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        self.pending.append(table)
        self.rows += table.num_rows
        if self.rows >= ROW_GROUP_ROWS:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        table = pa.concat_tables(self.pending) if self.pending else SPLIT_SCHEMA.empty_table()
        whole = table.num_rows if final else table.num_rows - table.num_rows % ROW_GROUP_ROWS
        for start in range(0, whole, ROW_GROUP_ROWS):  # one write, one row group
            self.writer.write_table(table.slice(start, min(ROW_GROUP_ROWS, whole - start)))
        rest = table.slice(whole)
        self.pending, self.rows = ([rest], rest.num_rows) if rest.num_rows else ([], 0)

    def close(self) -> Shard:
        self._flush(final=True)
        return self.writer.close()

    def abort(self) -> None:
        self.writer.abort()


def encode_partition(recipe: Recipe, plan: SamplePlan, part: int) -> Manifest:
    """A samples shard -> its train and validation split shards; reused when its marker is current."""
    from pretrain.data.tokenize import DateStats, is_validation

    if (done := reuse(plan.marker_url(part), plan.part_fingerprint(part))) is not None:
        return done
    info = plan.partitions[part]
    encoder = _encoder(plan)
    label_index = {label: i for i, label in enumerate(plan.labels)}
    counts: collections.Counter = collections.Counter()
    dates = {split: DateStats() for split in SPLITS}
    writers = {split: _GroupedWriter(plan.shard_url(split, part)) for split in SPLITS}
    try:
        for batch in iter_batches(info["url"], columns=READ_COLUMNS):
            table = pa.Table.from_batches([batch])
            texts = [t or "" for t in table.column("text").to_pylist()]
            if encoder is not None:  # image-text: a sample needs its caption
                has = np.array([bool(t) for t in texts], dtype=bool)
                counts["no_caption"] += int((~has).sum())
                table = table.filter(pa.array(has))
                texts = [t for t, keep in zip(texts, has, strict=True) if keep]
            ids = table.column("id").to_pylist()
            val = np.array([is_validation(i, recipe.split.val_fraction, recipe.seed) for i in ids], dtype=bool)
            rows = _split_rows(table, texts, encoder, plan, recipe.model.seq_len, label_index)
            for split, mask in (("train", ~val), ("val", val)):
                chosen = rows.filter(pa.array(mask))
                writers[split].write(chosen)
                counts[f"{split}_samples"] += chosen.num_rows
                counts[f"{split}_tokens"] += int(pc.sum(pc.list_value_length(
                    chosen.column("caption"))).as_py() or 0)
                counts[f"{split}_bytes"] += sum(len(t.encode("utf-8", "surrogatepass"))  # caption + stored image
                                                for t, m in zip(texts, mask, strict=True) if m)
                counts[f"{split}_bytes"] += int(pc.sum(pc.binary_length(chosen.column("image"))).as_py() or 0)
                for day, m in zip(table.column("date").to_pylist(), mask, strict=True):
                    if m:
                        dates[split].add(day)
        shards = []
        for split in SPLITS:
            shard = writers[split].close()
            shard.meta = {"split": split, "source": info["source"]}
            shards.append(shard)
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    stats = {k: int(counts.get(k, 0)) for k in (*(f"{s}_{k}" for s in SPLITS for k in ("samples", "tokens", "bytes")),
                                               "no_caption")}
    marker = Manifest(kind="samples-part", root=plan.root, fingerprint=plan.part_fingerprint(part), shards=shards,
                      stats=stats, extra={"dates": {split: d.as_dict() for split, d in dates.items()}})
    marker.save(plan.marker_url(part))
    return marker


def _encoder(plan: SamplePlan):
    """The caption encoder of an image-text run (``tokenizers``, one thread: the step fans out); None otherwise."""
    if not plan.tokenizer:
        return None
    from pretrain.data.tokenizer.encoder import Encoder

    return Encoder.from_json(storage.read_text(storage.join(plan.tokenizer, "tokenizer.json")), kind="hf")


def _split_rows(table: pa.Table, texts: list[str], encoder, plan: SamplePlan, seq_len: int,
                label_index: dict[str, int]) -> pa.Table:
    """The split shard's rows of one batch: captions cut to ``seq_len - 1`` tokens then EOS; labels as indices."""
    if encoder is not None:
        encoded = [np.append(ids[: seq_len - 1], plan.eos_id) for ids in encoder.encode_batch(texts)]
    else:
        encoded = [np.zeros(0, np.int64)] * len(texts)
    lengths = np.fromiter((len(e) for e in encoded), np.int32, count=len(encoded))
    offsets = np.zeros(len(encoded) + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.concatenate(encoded).astype(np.int32) if encoded else np.zeros(0, np.int32)
    caption = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, pa.int32()))
    labels = pa.array([label_index.get(label or "", -1) for label in table.column("label").to_pylist()], pa.int32())
    return pa.table({"id": table.column("id"), "source": table.column("source"), "image": table.column("image"),
                     "text": pa.array(texts, pa.string()), "caption": caption, "label": labels}, schema=SPLIT_SCHEMA)


# -- stage 3: the manifest -------------------------------------------------------------------------------------
def check_validation(recipe: Recipe, stats: dict[str, Any]) -> None:
    """Enough held-out samples to evaluate: image-text needs a whole retrieval pool, image-only at least one."""
    val = int(stats.get("val_samples", 0))
    need = recipe.evaluate.retrieval_pool if captions(recipe) else 1
    if captions(recipe) and not val and not int(stats.get("train_samples", 0)) and int(stats.get("no_caption", 0)):
        raise RecipeError(f"train.objective image_text_contrastive: none of the {stats['no_caption']} samples has a "
                          "caption (a .txt/.json beside each image, a webdataset .txt, or text_field): add captions, "
                          "or train image_contrastive, which needs none")
    if val < need:
        what = f"evaluate.retrieval_pool={need} needs as many" if captions(recipe) else "evaluation needs some"
        raise RecipeError(f"split.val_fraction: the validation split has only {val} samples ({what}; "
                          f"{stats.get('train_samples', 0)} in train, {stats.get('no_caption', 0)} without a "
                          "caption): raise split.val_fraction or add data")
    distinct = int(stats.get("val_distinct_captions", need))
    if captions(recipe) and distinct < need:  # a retrieval pool holds no two samples with the same caption
        raise RecipeError(f"split.val_fraction: the validation split has only {distinct} distinct captions "
                          f"(evaluate.retrieval_pool={need} needs as many): raise split.val_fraction, add data or "
                          "lower evaluate.retrieval_pool")
    if not int(stats.get("train_samples", 0)):
        raise RecipeError("split.val_fraction: the train split has no samples: lower split.val_fraction or add data")


def finish(recipe: Recipe, plan: SamplePlan) -> Manifest:
    """Counts per source, the validation check, the samples manifest (saved where the tokens manifest goes)."""
    if (done := reuse(plan.root, plan.fingerprint)) is not None:
        check_validation(recipe, done.stats)
        return done
    parts = [encode_partition(recipe, plan, p) for p in range(len(plan.partitions))]  # reused: already done
    shards = [s for m in parts for s in m.shards]
    by_source: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for info, m in zip(plan.partitions, parts, strict=True):
        by_source[info["source"]].update(m.stats)
    for name in (s.name for s in recipe.sources):
        by_source.setdefault(name, collections.Counter())
    rows: dict[str, dict[str, int]] = {}
    for name, c in sorted(by_source.items()):
        rows[name] = {k: int(c.get(k, 0)) for k in ("train_samples", "val_samples", "no_caption", "train_tokens",
                                                     "val_tokens", "train_bytes", "val_bytes")}
        # the names the text runs' facts read (the data funnel, the model card): a sample is a document there
        rows[name].update(train_documents=rows[name]["train_samples"], val_documents=rows[name]["val_samples"])
    totals = merge_stats(rows.values())
    stats: dict[str, Any] = {k: int(totals.get(k, 0)) for k in ("train_samples", "val_samples", "no_caption",
                                                               "train_tokens", "val_tokens")}
    stats["val_distinct_captions"] = _distinct_captions([s for s in shards if s.meta["split"] == "val"])
    stats["by_source"] = rows
    check_validation(recipe, stats)
    from pretrain.data.tokenize import DateStats

    dates = {name: {split: DateStats() for split in SPLITS} for name in by_source}
    for info, m in zip(plan.partitions, parts, strict=True):
        for split in SPLITS:
            found = DateStats.from_dict(m.extra.get("dates", {}).get(split, {}))
            dates[info["source"]][split] = dates[info["source"]][split].merge(found)
    result = Manifest(
        kind="samples", root=plan.root, fingerprint=plan.fingerprint, shards=shards, stats=stats,
        config={"tokenizer": recipe.tokenizer.model_dump() if plan.tokenizer else None,
                "split": recipe.split.model_dump(), "images": recipe.images.model_dump()},
        extra={"modality": plan.modality, "tokenizer": plan.tokenizer, "vocab_size": plan.vocab_size,
               "eos_id": plan.eos_id, "pad_id": plan.pad_id, "tokenizer_hash": plan.tokenizer_hash,
               "labels": plan.labels, "image_size": plan.image_size,
               "dates": {name: {s: d.as_dict() for s, d in row.items()} for name, row in sorted(dates.items())}})
    result.save()
    return result


def _distinct_captions(shards: list[Shard]) -> int:
    """Distinct caption texts in the validation split, ignoring case and spacing, as retrieval pools count them."""
    seen: set[str] = set()
    for shard in shards:
        for batch in iter_batches(shard.url, columns=["text"]):
            seen.update(" ".join(t.lower().split()) for t in batch.column("text").to_pylist() if t)
    return len(seen)


# -- all stages ------------------------------------------------------------------------------------------------
def encode_one(recipe_json: str, part: int) -> dict[str, Any]:
    recipe = from_json(recipe_json)
    return encode_partition(recipe, load_plan(recipe), int(part)).stats


def split(recipe: Recipe, documents: Manifest, workers: int | None = None) -> Manifest:
    """prepare -> split every partition (a process pool) -> finish; the whole step reused when its inputs match."""
    fp = step_fingerprint(recipe, documents)
    if (done := reuse(recipe.url("tokens"), fp)) is not None:
        check_validation(recipe, done.stats)
        return done
    plan = prepare(recipe, documents, fp)
    workers = min(workers or os.cpu_count() or 1, max(1, len(plan.partitions)))
    with Pool(workers) as run:
        run(encode_one, [(recipe.to_json(), p) for p in range(len(plan.partitions))])
    return finish(recipe, plan)
