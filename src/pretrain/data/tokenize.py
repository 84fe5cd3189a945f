"""Tokenize: one tokenizer for the run, then token shards per documents partition, then the mixture.

Three stages, each a KFP task (the middle one a fan-out) and the same functions in ``pretrain data``:

- ``prepare``: train the tokenizer on a sample drawn across sources (or load a Hugging Face tokenizer from
  ``tokenizer.path`` / ``model.init_from``), save it with the run, pick the encoder (tiktoken when it gives
  the very ids ``tokenizers`` gives) and write the plan: the partitions to encode;
- ``encode_partition``: one documents shard -> a train and a validation token shard (each document wholly in
  one, by a hash of its id; EOS after every document), with a completion marker;
- ``finish``: the per-source counts, the mixture (planned tokens and epochs per source), the validation
  check, the manifest.

Image runs (``recipe.modality`` not ``text``) take the same three functions to ``pretrain.data.samples_split``:
the samples are split into train and validation shards with their captions encoded, under the same URL.

The fingerprint covers the tokenizer settings (and the loaded tokenizer's content), the documents, the split,
the mixture and ``model.seq_len`` (the saved tokenizer's maximum length).

Each partition also counts its documents' dates per split (``DateStats``); ``finish`` merges them per source into
``extra["dates"]``, the basis of the model's knowledge cutoff (the latest date in the train split). A date is
read, never guessed: an empty or unreadable one is counted as undated.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import functools
import json
import os
import re
from typing import TYPE_CHECKING, Any, Self

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from pretrain import storage
from pretrain.config import Recipe, RecipeError, fingerprint, from_json
from pretrain.data.documents import iter_batches
from pretrain.data.mixture import plan_mixture
from pretrain.data.pool import Pool
from pretrain.data.readers.base import InputError
from pretrain.manifest import Manifest, Shard, merge_stats, reuse

if TYPE_CHECKING:
    from pretrain.data.samples_split import SamplePlan

PLAN_NAME = "plan.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
SPLITS = ("train", "val")


class PartitionedPlan:
    """What a fanned-out step's saved plan (text tokens or image samples) knows of its partitions: each one's
    completion marker and fingerprint under ``root``, from the step's ``fingerprint``."""

    root: str
    fingerprint: str

    def marker_url(self, part: int) -> str:
        return storage.join(self.root, "_done", f"part-{part:05d}.json")

    def part_fingerprint(self, part: int) -> str:
        return fingerprint(self.fingerprint, "part", part)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    def save(self) -> None:
        storage.write_text(storage.join(self.root, PLAN_NAME), self.to_json())

    @classmethod
    def load(cls, root: str) -> Self:
        return cls(**json.loads(storage.read_text(storage.join(root, PLAN_NAME))))

    @classmethod
    def saved(cls, root: str, fp: str) -> Self | None:
        """The plan saved under ``root`` when it was made from the same inputs (``fp``); else None."""
        try:
            found = cls.load(root)
        except (FileNotFoundError, TypeError):  # none yet, or the other modality's plan at the same place
            return None
        return found if found.fingerprint == fp else None


@dataclasses.dataclass
class TokenPlan(PartitionedPlan):
    root: str
    fingerprint: str
    tokenizer: str  # the run's tokenizer folder
    tokenizer_hash: str
    encoder: str  # "tiktoken" or "hf"
    vocab_size: int
    eos_id: int
    partitions: list[dict[str, Any]]  # {"url", "source", "rows"} of each documents shard, in manifest order
    pad_id: int | None = None  # the tokenizer's padding and mask tokens (masked LM needs the mask token)
    mask_id: int | None = None

    def shard_url(self, split: str, part: int) -> str:
        return storage.join(self.root, split, f"part-{part:05d}")



def is_validation(doc_id: str, val_fraction: float, seed: int) -> bool:
    return xxhash.xxh64_intdigest(doc_id.encode(), seed=seed) % 1_000_000 < val_fraction * 1_000_000


def step_fingerprint(recipe: Recipe, documents: Manifest) -> str:
    if recipe.modality != "text":
        from pretrain.data import samples_split

        return samples_split.step_fingerprint(recipe, documents)
    from pretrain.data.tokenizer.load import tokenizer_hash, tokenizer_source

    source = tokenizer_source(recipe)
    loaded = tokenizer_hash(source) if source else None
    return fingerprint(recipe.tokenizer.model_dump(), loaded, recipe.model.init_from, recipe.split.model_dump(),
                       recipe.mixture.model_dump(), recipe.model.seq_len, recipe.seed, documents.fingerprint)


# -- document dates ----------------------------------------------------------------------------------------------
_ISO = re.compile(r"(\d{4})-(\d\d)-(\d\d)(?:[T ](\d\d):(\d\d)(?::(\d\d)(?:[.,]\d+)?)?)?\s*(Z|[+-]\d\d:?\d\d)?")


@functools.lru_cache(maxsize=1 << 16)
def document_day(value: str | None) -> str | None:
    """The UTC day ``YYYY-MM-DD`` of an ISO 8601 date (the documents' ``date`` column); None when the value is
    empty or not such a date. A time with a zone offset is moved to UTC first (11 pm at -05:00 is the next day)."""
    if value is not None and not isinstance(value, str):  # a date or timestamp column instead of ISO text
        value = value.isoformat() if hasattr(value, "isoformat") else None
    match = _ISO.fullmatch((value or "").strip())
    if match is None:
        return None
    year, month, day, hour, minute, second, zone = match.groups()
    try:
        moment = datetime.datetime(int(year), int(month), int(day), int(hour or 0), int(minute or 0),
                                   int(second or 0))
    except ValueError:  # 2024-02-30, hour 25: not a date
        return None
    if hour is not None and zone and zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        digits = zone[1:].replace(":", "")
        try:
            moment -= sign * datetime.timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
        except OverflowError:  # year 1 or 9999 pushed across the range's edge
            return None
    return moment.date().isoformat()


@dataclasses.dataclass
class DateStats:
    """Document dates of one source and split: how many are dated, the range, a count per year.

    ``undated`` counts documents without a date and those whose date is unreadable (``invalid``, a subset),
    so ``dated + undated`` is every document. Merged across partitions with ``merge``.
    """

    dated: int = 0
    undated: int = 0
    invalid: int = 0
    earliest: str | None = None
    latest: str | None = None
    by_year: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def add(self, value: str | None) -> None:
        day = document_day(value)
        if day is None:
            self.undated += 1
            self.invalid += bool(str(value or "").strip())
            return
        self.dated += 1
        self.by_year[day[:4]] += 1
        self.earliest = day if self.earliest is None else min(self.earliest, day)
        self.latest = day if self.latest is None else max(self.latest, day)

    def merge(self, other: DateStats) -> DateStats:
        days = [d for d in (self.earliest, other.earliest, self.latest, other.latest) if d]
        return DateStats(self.dated + other.dated, self.undated + other.undated, self.invalid + other.invalid,
                         min(days) if days else None, max(days) if days else None, self.by_year + other.by_year)

    def as_dict(self) -> dict[str, Any]:
        return {"dated": self.dated, "undated": self.undated, "invalid": self.invalid, "earliest": self.earliest,
                "latest": self.latest, "by_year": dict(sorted(self.by_year.items()))}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DateStats:
        return cls(int(data.get("dated", 0)), int(data.get("undated", 0)), int(data.get("invalid", 0)),
                   data.get("earliest"), data.get("latest"),
                   collections.Counter({str(k): int(v) for k, v in (data.get("by_year") or {}).items()}))


# -- stage 1: the tokenizer and the plan -----------------------------------------------------------------------
def prepare(recipe: Recipe, documents: Manifest, fp: str | None = None) -> TokenPlan | SamplePlan:
    """Train or load the tokenizer, choose the encoder, save the plan (reused when made from the same inputs).
    ``fp``: the step's fingerprint when the caller has it already."""
    if recipe.modality != "text":
        from pretrain.data import samples_split

        return samples_split.prepare(recipe, documents, fp)
    from pretrain.data.tokenizer.encoder import Encoder
    from pretrain.data.tokenizer.load import (
        load_tokenizer,
        save_tokenizer,
        special_ids,
        tokenizer_hash,
        tokenizer_source,
    )
    from pretrain.data.tokenizer.train import train_tokenizer, training_sample

    root = recipe.url("tokens")
    fp = fp or step_fingerprint(recipe, documents)
    found = TokenPlan.saved(root, fp)
    if found is not None:
        return found
    tok_url = recipe.url("tokenizer")
    source = tokenizer_source(recipe)
    if source:
        _copy_tokenizer(source, tok_url)
        tok = load_tokenizer(tok_url)
    else:
        weights = recipe.mixture.weights if recipe.tokenizer.sample == "mixture" and recipe.mixture.weights else None
        tok = train_tokenizer(training_sample(documents, recipe.tokenizer.train_chars, weights, recipe.seed),
                              recipe.tokenizer)
        save_tokenizer(tok, tok_url, recipe.model.seq_len)
        tok = load_tokenizer(tok_url)
    ids = special_ids(tok, tok_url)
    probe = _probe_texts(documents)
    encoder = Encoder.create(tok, recipe.tokenizer.encoder, probe)
    partitions = [{"url": s.url, "source": s.meta.get("source", ""), "rows": s.rows} for s in documents.shards]
    plan = TokenPlan(root=root, fingerprint=fp, tokenizer=tok_url, tokenizer_hash=tokenizer_hash(tok_url),
                     encoder=encoder.kind, vocab_size=tok.get_vocab_size(), eos_id=int(ids["eos"]),
                     partitions=partitions, pad_id=ids["pad"], mask_id=ids["mask"])
    plan.save()
    return plan


def load_plan(recipe: Recipe) -> TokenPlan | SamplePlan:
    if recipe.modality != "text":
        from pretrain.data import samples_split

        return samples_split.load_plan(recipe)
    return TokenPlan.load(recipe.url("tokens"))


def _copy_tokenizer(source: str, dest: str) -> None:
    """The tokenizer files of a tokenizer or model folder (never a model's weights) into the run."""
    copied = 0
    for name in TOKENIZER_FILES:
        url = storage.join(source, name)
        if storage.exists(url):
            storage.write_bytes(storage.join(dest, name), storage.read_bytes(url))
            copied += 1
    if not copied:
        raise RecipeError(f"tokenizer: no tokenizer.json under {source}")


def _probe_texts(documents: Manifest, limit: int = 64) -> list[str]:
    """A few documents of each source: what the encoder choice is checked on."""
    probe: list[str] = []
    seen: collections.Counter = collections.Counter()
    for shard in documents.shards:
        source = shard.meta.get("source", "")
        if seen[source] >= limit:
            continue
        for batch in iter_batches(shard.url, columns=["text"]):
            texts = batch.column("text").to_pylist()[: limit - seen[source]]
            probe += texts
            seen[source] += len(texts)
            break
    return probe


# -- stage 2: one partition ------------------------------------------------------------------------------------
def encode_partition(recipe: Recipe, plan: TokenPlan | SamplePlan, part: int) -> Manifest:
    """A documents shard -> its train and validation token shards; reused when its marker is current."""
    from pretrain.data.tokenizer.encoder import Encoder
    from pretrain.tokens import TokenShardWriter

    if recipe.modality != "text":
        from pretrain.data import samples_split

        return samples_split.encode_partition(recipe, plan, part)
    if (done := reuse(plan.marker_url(part), plan.part_fingerprint(part))) is not None:
        return done
    info = plan.partitions[part]
    columns = ["id", "text", "date"] if "date" in _check_schema(info["url"]) else ["id", "text"]
    tok_json = storage.read_text(storage.join(plan.tokenizer, "tokenizer.json"))
    encoder = Encoder.from_json(tok_json, recipe.tokenizer.encoder, plan.encoder)
    writers = {split: TokenShardWriter(plan.shard_url(split, part), plan.vocab_size, plan.eos_id,
                                       plan.tokenizer_hash, source=info["source"], split=split) for split in SPLITS}
    dates = {split: DateStats() for split in SPLITS}
    eos = np.asarray([plan.eos_id], dtype=np.uint32)
    for batch in iter_batches(info["url"], columns=columns):
        ids, texts = batch.column("id").to_pylist(), batch.column("text").to_pylist()
        days = batch.column("date").to_pylist() if "date" in columns else [None] * len(ids)
        for doc_id, text, day, enc in zip(ids, texts, days, encoder.encode_batch(texts), strict=True):
            split = "val" if is_validation(doc_id, recipe.split.val_fraction, recipe.seed) else "train"
            writers[split].add(np.concatenate([enc, eos]), len(text.encode("utf-8", "surrogatepass")))
            dates[split].add(day)
    shards = []
    for split, writer in writers.items():
        header = writer.close()
        shards.append(Shard(url=plan.shard_url(split, part), rows=header["tokens"], bytes=header["bytes"],
                            checksum=header["checksum"],
                            meta={"split": split, "source": info["source"], "documents": header["documents"]}))
    marker = Manifest(kind="tokens-part", root=plan.root, fingerprint=plan.part_fingerprint(part), shards=shards,
                      stats={f"{s.meta['split']}_{k}": v for s in shards
                             for k, v in (("tokens", s.rows), ("documents", s.meta["documents"]), ("bytes", s.bytes))},
                      extra={"dates": {split: d.as_dict() for split, d in dates.items()}})
    marker.save(plan.marker_url(part))
    return marker


def _check_schema(url: str) -> list[str]:
    """A documents shard must have string ``id`` and ``text`` columns: anything else is named, not guessed at.
    Returns the shard's column names."""
    fs, path = storage.filesystem(url)
    try:
        with fs.open(path, "rb") as f:
            schema = pq.read_schema(f)
    except (OSError, pa.ArrowException) as err:
        raise InputError(url, None, f"not a readable documents shard: {err}") from None
    for name in ("id", "text"):
        field = schema.field(name) if name in schema.names else None
        if field is None or not (pa.types.is_string(field.type) or pa.types.is_large_string(field.type)):
            raise InputError(url, None, f"a documents shard needs a string column {name!r}; its schema has "
                                        f"{', '.join(f'{f.name}: {f.type}' for f in schema)}")
    return list(schema.names)


# -- stage 3: the manifest -------------------------------------------------------------------------------------
def finish(recipe: Recipe, plan: TokenPlan | SamplePlan) -> Manifest:
    """Counts per source, the mixture and the validation check over every partition; the tokens manifest."""
    if recipe.modality != "text":
        from pretrain.data import samples_split

        return samples_split.finish(recipe, plan)
    if (done := reuse(plan.root, plan.fingerprint)) is not None:
        return done
    parts = [encode_partition(recipe, plan, p) for p in range(len(plan.partitions))]  # reused: already done
    shards = [s for m in parts for s in m.shards]
    by_source: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for s in shards:
        for key, value in (("tokens", s.rows), ("documents", s.meta["documents"]), ("bytes", s.bytes)):
            by_source[s.meta["source"]][f"{s.meta['split']}_{key}"] += value
    for name in (s.name for s in recipe.sources):
        by_source.setdefault(name, collections.Counter())
    totals = merge_stats(dict(c) for c in by_source.values())
    val_tokens = totals.get("val_tokens", 0)
    if val_tokens <= recipe.model.seq_len + 1:
        raise RecipeError(f"split.val_fraction: the validation split has only {val_tokens} tokens (needs more "
                          f"than model.seq_len+1={recipe.model.seq_len + 1}): raise split.val_fraction or add data")
    mixture = plan_mixture({k: int(v.get("train_tokens", 0)) for k, v in by_source.items()},
                           recipe.mixture.weights)
    stats: dict[str, Any] = {k: totals.get(k, 0) for k in ("train_tokens", "val_tokens", "train_documents",
                                                          "val_documents", "train_bytes", "val_bytes")}
    stats["vocab_size"] = plan.vocab_size
    stats["by_source"] = {k: dict(v) for k, v in sorted(by_source.items())}
    stats["mixture"] = mixture
    extra: dict[str, Any] = {}
    if all("dates" in m.extra for m in parts):  # partitions encoded by older code carry none: no partial dates
        dates = {name: {split: DateStats() for split in SPLITS} for name in by_source}
        for info, m in zip(plan.partitions, parts, strict=True):
            for split in SPLITS:
                found = DateStats.from_dict(m.extra["dates"].get(split, {}))
                dates[info["source"]][split] = dates[info["source"]][split].merge(found)
        extra["dates"] = {name: {split: d.as_dict() for split, d in row.items()} for name, row in sorted(dates.items())}
    result = Manifest(
        kind="tokens", root=plan.root, fingerprint=plan.fingerprint, shards=shards, stats=stats,
        config={"tokenizer": recipe.tokenizer.model_dump(), "split": recipe.split.model_dump(),
                "mixture": recipe.mixture.model_dump()},
        extra={"tokenizer": plan.tokenizer, "vocab_size": plan.vocab_size, "eos_id": plan.eos_id,
               "pad_id": plan.pad_id, "mask_id": plan.mask_id,
               "tokenizer_hash": plan.tokenizer_hash, "encoder": plan.encoder, "mixture": mixture, **extra})
    result.save()
    return result


# -- all stages ------------------------------------------------------------------------------------------------
def encode_one(recipe_json: str, part: int) -> dict[str, Any]:
    """One partition in a worker process (or a KFP task): its stats."""
    recipe = from_json(recipe_json)
    return encode_partition(recipe, load_plan(recipe), int(part)).stats


def tokenize(recipe: Recipe, documents: Manifest, workers: int | None = None) -> Manifest:
    """prepare -> encode every partition (a process pool of ``workers``, default all cores) -> finish."""
    if recipe.modality != "text":
        from pretrain.data import samples_split

        return samples_split.split(recipe, documents, workers)
    fp = step_fingerprint(recipe, documents)
    if (done := reuse(recipe.url("tokens"), fp)) is not None:
        return done
    plan = prepare(recipe, documents, fp)
    workers = min(workers or os.cpu_count() or 1, max(1, len(plan.partitions)))
    with Pool(workers) as run:
        run(encode_one, [(recipe.to_json(), p) for p in range(len(plan.partitions))])
    return finish(recipe, plan)
