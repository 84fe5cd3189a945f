"""A small multiple-choice cloze task set built from the run's own validation documents.

Hub benchmarks cannot be downloaded here, and a tiny model scores chance on them anyway; cloze items cut from
held-out documents of the very sources the model was trained on measure what it learnt, on any machine:

- ``next_line`` (code sources): the lines before a point in a validation document, then the true next line
  among lines of *other* validation documents of the same source, matched in length (re-indented like the
  true line, so indentation gives nothing away);
- ``next_sentence`` (prose and web sources): the same with sentences.

Only validation-split documents are used: the documents shards that tokenize read (the dedup output), split by
the very rule tokenize applies (``pretrain.data.tokenize.is_validation`` on the id, ``split.val_fraction`` and
the recipe seed). Items whose context + answer shares an ``ngram``-word sequence with any TRAIN-split document
are found (decontamination) and removed; the counts are reported. The seed fixes everything: which points,
which distractors, where the answer lands among the choices.

Each task is written as a local lm-eval task folder (``<task>/<task>.yaml`` with ``dataset_path: json`` and
``dataset_kwargs.data_files`` pointing at ``<task>/<task>.jsonl``), so ``lm_eval --include_path DIR`` runs it
offline; ``tasks.json`` beside them records counts, chance level and decontamination.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import json
import random
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pretrain import storage
from pretrain.config import fingerprint
from pretrain.data.documents import iter_batches
from pretrain.data.tokenize import is_validation
from pretrain.manifest import Manifest

TASK_KINDS = ("next_line", "next_sentence")
INDEX_NAME = "tasks.json"
FORMAT = "pretrain-tasks/1"
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")
_HASH_BASE = np.uint64(1099511628211)  # FNV prime: the rolling n-gram hash multiplier


class TaskFileError(ValueError):
    """A task file or item that cannot be used; the message names the file (and line)."""


@dataclasses.dataclass(frozen=True)
class TaskOptions:
    """How items are cut. Defaults suit a run's validation split of tens to thousands of documents."""

    choices: int = 4  # answer + distractors per item (fewer only where a source has too few candidates)
    items_per_document: int = 8
    max_items: int = 1000  # per task, sampled with the seed when more are possible
    oversample: int = 4  # candidates checked per item wanted: templated text (docs pages) is often contaminated
    max_documents: int = 2000  # validation documents read per source (the distractor pool)
    context_lines: int = 12  # next_line: lines of context before the answer
    context_sentences: int = 3  # next_sentence: sentences of context
    min_chars: int = 12  # an answer (stripped) at least this long ...
    max_chars: int = 240  # ... and at most this long
    ngram: int = 13  # decontamination: words in a shared sequence that flags an item
    decontaminate: bool = True  # False: report contaminated items but keep them


@dataclasses.dataclass
class Item:
    id: str
    source: str
    doc_id: str
    context: str
    choices: list[str]
    answer: int

    def text(self) -> str:
        """What the model reads when the true answer is chosen (the decontamination unit)."""
        return self.context + self.choices[self.answer]


@dataclasses.dataclass
class _Candidate:
    source: str
    doc_id: str
    position: int
    context: str
    answer: str  # stripped; the true continuation is prefix + answer
    prefix: str  # leading indentation (next_line) or a space (next_sentence)


# -- reading the split ----------------------------------------------------------------------------------------
def validation_documents(documents: Manifest, val_fraction: float, seed: int, max_documents: int = 2000,
                         ) -> tuple[dict[str, list[dict[str, str]]], dict[str, int]]:
    """The validation documents per source (``id``, ``text``, ``meta``), at most ``max_documents`` each, and
    how many each source has in all (the count tokenize made, whatever the cap)."""
    found: dict[str, list[dict[str, str]]] = collections.defaultdict(list)
    counts: collections.Counter[str] = collections.Counter()
    for shard in documents.shards:
        for batch in iter_batches(shard.url, columns=["id", "text", "source", "meta"]):
            for doc_id, text, source, meta in zip(*(batch.column(c).to_pylist() for c in
                                                    ("id", "text", "source", "meta")), strict=True):
                if not is_validation(doc_id, val_fraction, seed):
                    continue
                counts[source] += 1
                if len(found[source]) < max_documents:
                    found[source].append({"id": doc_id, "text": text, "meta": meta or ""})
    return {k: sorted(v, key=lambda d: d["id"]) for k, v in sorted(found.items())}, dict(counts)


def train_texts(documents: Manifest, val_fraction: float, seed: int) -> Iterator[str]:
    """The texts of the train-split documents, streamed shard by shard."""
    for shard in documents.shards:
        for batch in iter_batches(shard.url, columns=["id", "text"]):
            for doc_id, text in zip(batch.column("id").to_pylist(), batch.column("text").to_pylist(), strict=True):
                if not is_validation(doc_id, val_fraction, seed):
                    yield text


def infer_kind(docs: Sequence[Mapping[str, str]]) -> str:
    """``next_line`` for a code source (its documents carry the code reader's ``language``), else
    ``next_sentence``."""
    coded = sum('"language"' in (d.get("meta") or "") for d in docs)
    return "next_line" if docs and coded * 2 >= len(docs) else "next_sentence"


# -- cutting items --------------------------------------------------------------------------------------------
def _units(text: str, kind: str) -> list[str]:
    if kind == "next_line":
        return text.split("\n")
    return [s for s in _SENTENCE_END.split(" ".join(text.split())) if s]


def _usable(unit: str, opts: TaskOptions) -> bool:
    s = unit.strip()
    return opts.min_chars <= len(s) <= opts.max_chars and sum(c.isalnum() for c in s) >= 3


def _candidates(source: str, doc: Mapping[str, str], kind: str, opts: TaskOptions) -> list[_Candidate]:
    units = _units(doc["text"], kind)
    out = []
    for i, unit in enumerate(units):
        if i == 0 or not _usable(unit, opts):
            continue
        if kind == "next_line":
            before = units[max(0, i - opts.context_lines):i]
            if sum(bool(u.strip()) for u in before) < 3:
                continue
            context = "\n".join(before) + "\n"
            prefix = unit[: len(unit) - len(unit.lstrip())]
        else:
            before = units[max(0, i - opts.context_sentences):i]
            context, prefix = " ".join(before), " "
        if len((context + unit).split()) < opts.ngram:  # too short to be checked for contamination
            continue
        out.append(_Candidate(source, doc["id"], i, context, unit.strip(), prefix))
    return out


class _Pool:
    """A source's distractor units (stripped, distinct per document), sorted by length."""

    def __init__(self, docs: Sequence[Mapping[str, str]], kind: str, opts: TaskOptions) -> None:
        seen: set[tuple[str, str]] = set()
        units = []
        for doc in docs:
            for unit in _units(doc["text"], kind):
                s = unit.strip()
                if _usable(s, opts) and (doc["id"], s) not in seen:
                    seen.add((doc["id"], s))
                    units.append((len(s), s, doc["id"]))
        units.sort()
        self.units = units
        self.lengths = [u[0] for u in units]

    def distractors(self, cand: _Candidate, n: int, rng: random.Random, window: int = 24) -> list[str]:
        """``n`` distinct units of other documents, drawn among the ``window`` closest in length."""
        length = len(cand.answer)
        mid = bisect.bisect_left(self.lengths, length)
        lo, hi, near = mid - 1, mid, []
        seen = {cand.answer}
        while len(near) < window and (lo >= 0 or hi < len(self.units)):  # widen both ways, nearest first
            take_hi = lo < 0 or (hi < len(self.units) and self.lengths[hi] - length <= length - self.lengths[lo])
            _, text, doc_id = self.units[hi] if take_hi else self.units[lo]
            hi, lo = (hi + 1, lo) if take_hi else (hi, lo - 1)
            if doc_id != cand.doc_id and text not in seen:
                seen.add(text)
                near.append(text)
        return rng.sample(near, min(n, len(near)))


def _make_items(source: str, docs: Sequence[Mapping[str, str]], kind: str, opts: TaskOptions,
                rng: random.Random) -> list[Item]:
    pool = _Pool(docs, kind, opts)
    items = []
    for doc in docs:
        cands = _candidates(source, doc, kind, opts)
        for cand in rng.sample(cands, min(opts.items_per_document * opts.oversample, len(cands))):
            distractors = pool.distractors(cand, opts.choices - 1, rng)
            if not distractors:
                continue
            choices = [cand.prefix + t for t in [cand.answer, *distractors]]
            order = list(range(len(choices)))
            rng.shuffle(order)
            items.append(Item(id=f"{source}/{cand.doc_id}/{cand.position}", source=source, doc_id=cand.doc_id,
                              context=cand.context, choices=[choices[j] for j in order], answer=order.index(0)))
    return items


# -- decontamination ------------------------------------------------------------------------------------------
def ngram_hashes(words: Sequence[str], n: int) -> np.ndarray:
    """A 64-bit hash of every run of ``n`` consecutive words (polynomial, wrapping), vectorized."""
    if len(words) < n:
        return np.zeros(0, dtype=np.uint64)
    h = np.fromiter((hash(w) for w in words), dtype=np.int64, count=len(words)).view(np.uint64)
    m = len(words) - n + 1
    acc = np.zeros(m, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):
            acc = acc * _HASH_BASE + h[k:k + m]
    return acc


def contaminated(items: Sequence[Item], texts: Iterable[str], n: int) -> set[str]:
    """Ids of the items whose text shares an ``n``-word sequence with any of ``texts`` (streamed once)."""
    owners: dict[int, set[str]] = collections.defaultdict(set)
    for item in items:
        for h in ngram_hashes(item.text().split(), n).tolist():
            owners[h].add(item.id)
    if not owners:
        return set()
    keys = np.fromiter(owners, dtype=np.uint64, count=len(owners))
    hit: set[int] = set()
    for text in texts:
        grams = ngram_hashes(text.split(), n)
        if grams.size:
            hit.update(grams[np.isin(grams, keys)].tolist())
    return set().union(*(owners[h] for h in hit)) if hit else set()


# -- files ----------------------------------------------------------------------------------------------------
def task_yaml(name: str, data_file: str, cache_dir: str | None = None) -> str:
    """The lm-eval task config: items read as they are from a local JSONL (fields, not templates).
    ``cache_dir``: where ``datasets`` keeps its Arrow copy (default: its own cache under the home folder)."""
    import yaml

    dataset_kwargs: dict[str, Any] = {"data_files": {"test": data_file}}
    if cache_dir:
        dataset_kwargs["cache_dir"] = cache_dir
    config = {"task": name, "dataset_path": "json", "dataset_kwargs": dataset_kwargs,
              "test_split": "test", "output_type": "multiple_choice", "doc_to_text": "context",
              "doc_to_choice": "choices", "doc_to_target": "answer", "target_delimiter": "",
              "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
              "metadata": {"version": 1.0}}
    return yaml.safe_dump(config, sort_keys=False)


def _write_task(out_dir: str, name: str, items: Sequence[Item]) -> dict[str, str]:
    data_url = storage.join(out_dir, name, f"{name}.jsonl")
    yaml_url = storage.join(out_dir, name, f"{name}.yaml")
    storage.write_text(data_url, "".join(json.dumps(dataclasses.asdict(i), ensure_ascii=False) + "\n"
                                         for i in items))
    storage.write_text(yaml_url, task_yaml(name, data_url if storage.is_remote(data_url)
                                           else str(Path(data_url).resolve())))
    return {"file": f"{name}/{name}.jsonl", "yaml": f"{name}/{name}.yaml"}


def load_items(path: str) -> list[Item]:
    """The items of a task JSONL, each checked: a malformed one raises ``TaskFileError`` naming file and line."""
    items = []
    for number, line in enumerate(storage.read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as err:
            raise TaskFileError(f"{where}: not JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(raw, dict):
            raise TaskFileError(f"{where}: an item is a JSON object, got {type(raw).__name__}")
        missing = [k for k in ("context", "choices", "answer") if k not in raw]
        if missing:
            raise TaskFileError(f"{where}: missing {', '.join(missing)} (an item has context, choices, answer)")
        context, choices, answer = raw["context"], raw["choices"], raw["answer"]
        if not isinstance(context, str):
            raise TaskFileError(f"{where}: context must be a string")
        if not (isinstance(choices, list) and len(choices) >= 2 and all(isinstance(c, str) for c in choices)):
            raise TaskFileError(f"{where}: choices must be a list of at least 2 strings")
        if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
            raise TaskFileError(f"{where}: answer must be an index into choices (0..{len(choices) - 1}), "
                                f"got {answer!r}")
        items.append(Item(id=str(raw.get("id", number)), source=str(raw.get("source", "")),
                          doc_id=str(raw.get("doc_id", "")), context=context, choices=choices, answer=answer))
    return items


def load_index(task_dir: str) -> dict[str, Any]:
    """``tasks.json`` of a task folder: per task its files, items, chance and decontamination."""
    url = storage.join(task_dir, INDEX_NAME)
    try:
        index = storage.read_json(url)
    except FileNotFoundError:
        raise TaskFileError(f"{url}: no task index (build the task set with pretrain.evaluate.tasks)") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT or not isinstance(index.get("tasks"), dict):
        raise TaskFileError(f"{url}: not a {FORMAT} task index")
    return index


def chance(items: Sequence[Item]) -> float:
    """The expected accuracy of guessing: the mean of 1/len(choices)."""
    return float(np.mean([1.0 / len(i.choices) for i in items])) if items else 0.0


# -- the task set ---------------------------------------------------------------------------------------------
def build_tasks(documents: Manifest, out_dir: str, *, val_fraction: float, seed: int,
                kinds: Mapping[str, str] | None = None, options: TaskOptions | None = None,
                tokens: Manifest | None = None) -> dict[str, Any]:
    """Cut the task set from the validation documents of ``documents`` (the shards tokenize read) into
    ``out_dir``; returns (and writes) its index. Reused when ``out_dir`` holds a set made from the same inputs.

    ``kinds``: the task per source (``next_line`` or ``next_sentence``; a source mapped to None is left out);
    by default inferred from the documents. ``tokens``: the tokens manifest, whose per-source validation
    document counts must equal those found here (the split rule is the same), else an error.

    Decontamination runs on ``oversample`` times the candidates wanted (``checked``); the per-document and
    per-task caps apply to the clean ones, so a source of templated pages still yields items.
    """
    opts = options or TaskOptions()
    fp = fingerprint(documents.fingerprint, val_fraction, seed, dict(kinds or {}), dataclasses.asdict(opts),
                     FORMAT)
    try:
        found = load_index(out_dir)
        if found.get("fingerprint") == fp:
            return found
    except TaskFileError:
        pass
    docs, counts = validation_documents(documents, val_fraction, seed, opts.max_documents)
    if tokens is not None:
        _check_split(tokens, counts)
    rng = random.Random(seed)
    by_task: dict[str, list[Item]] = {}
    for source, source_docs in docs.items():
        kind = kinds.get(source, infer_kind(source_docs)) if kinds is not None else infer_kind(source_docs)
        if kind is None:
            continue
        if kind not in TASK_KINDS:
            raise ValueError(f"kinds[{source!r}]: {kind!r} is not one of {', '.join(TASK_KINDS)}")
        by_task.setdefault(kind, []).extend(_make_items(source, source_docs, kind, opts, rng))
    wanted = opts.max_items * opts.oversample
    by_task = {k: (rng.sample(v, wanted) if len(v) > wanted else v) for k, v in by_task.items()}
    checked = [i for v in by_task.values() for i in v]
    dirty = contaminated(checked, train_texts(documents, val_fraction, seed), opts.ngram)
    tasks: dict[str, Any] = {}
    for name, items in sorted(by_task.items()):
        flagged = sum(i.id in dirty for i in items)
        clean = [i for i in items if i.id not in dirty] if opts.decontaminate else list(items)
        kept = _cap(clean, opts, rng)
        tasks[name] = {**_write_task(out_dir, name, kept), "items": len(kept), "chance": chance(kept),
                       "sources": dict(collections.Counter(i.source for i in kept)),
                       "decontamination": {"ngram": opts.ngram, "checked": len(items), "contaminated": flagged,
                                           "removed": len(items) - len(clean)}}
    index = {"format": FORMAT, "fingerprint": fp, "seed": seed, "val_fraction": val_fraction,
             "options": dataclasses.asdict(opts), "validation_documents": counts, "tasks": tasks}
    storage.write_json(storage.join(out_dir, INDEX_NAME), index)
    return index


def _cap(items: Sequence[Item], opts: TaskOptions, rng: random.Random) -> list[Item]:
    """At most ``items_per_document`` of each document (in their drawn order), then at most ``max_items``."""
    per_doc: collections.Counter[tuple[str, str]] = collections.Counter()
    kept = []
    for item in items:
        per_doc[item.source, item.doc_id] += 1
        if per_doc[item.source, item.doc_id] <= opts.items_per_document:
            kept.append(item)
    if len(kept) > opts.max_items:
        keep = set(map(id, rng.sample(kept, opts.max_items)))
        kept = [i for i in kept if id(i) in keep]
    return kept


def _check_split(tokens: Manifest, counts: Mapping[str, int]) -> None:
    by_source = tokens.stats.get("by_source")
    if by_source:
        expected = {k: int(v.get("val_documents", 0)) for k, v in by_source.items() if v.get("val_documents")}
        if expected != {k: v for k, v in counts.items() if v}:
            raise TaskFileError(f"{tokens.root}: validation documents per source {expected} differ from the "
                                f"{dict(counts)} found by the split rule: the documents or split are not the "
                                f"ones tokenize used")
    elif "val_documents" in tokens.stats and int(tokens.stats["val_documents"]) != sum(counts.values()):
        raise TaskFileError(f"{tokens.root}: {tokens.stats['val_documents']} validation documents, but the split "
                            f"rule finds {sum(counts.values())}: the documents or split are not the ones tokenize "
                            f"used")


def recipe_kinds(recipe: Any) -> dict[str, str]:
    """The task of each recipe source: ``next_line`` for code, ``next_sentence`` for everything else."""
    return {s.name: "next_line" if s.format == "code" else "next_sentence" for s in recipe.sources}


def build_recipe_tasks(recipe: Any, out_dir: str | None = None, options: TaskOptions | None = None,
                       ) -> dict[str, Any]:
    """The task set of a run: its dedup output (what tokenize read), split and seed, into ``evaluate/tasks``."""
    tokens = Manifest.load(recipe.url("tokens"))
    return build_tasks(Manifest.load(recipe.url("dedup")), out_dir or recipe.url("evaluate", "tasks"),
                       val_fraction=recipe.split.val_fraction, seed=recipe.seed, kinds=recipe_kinds(recipe),
                       options=options, tokens=tokens)
