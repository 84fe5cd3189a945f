"""``pretrain evaluate MODEL_URL``: evaluate any Hugging Face causal or masked LM folder outside the pipeline.

Without a run root only task accuracy is measured: named lm-eval harness tasks (hub access, or datasets already
in the local cache) or a local task folder. With a pretrain run root the run's own yardsticks apply too: held-out
metrics per source on its validation token shards and its cloze task set, so a model trained elsewhere (or a
checkpoint of another run) is measured exactly as the run's own model was. Held-out metrics need the run's
tokenizer: token shards read with another vocabulary measure nothing, so a model with a different tokenizer gets
no held-out metrics and the report says why.

A CLIP or ViT folder (an image run's export) is measured against a run root's samples manifest: retrieval and the
linear probe as the evaluate step does (``pretrain.evaluate.contrastive``); retrieval needs the run's tokenizer
(the captions are stored as its token ids), else it is skipped and the report says why.

The report has the evaluate step's schema (``pretrain.evaluate.step``) and is written as report.json, report.md
and report.html; nothing is written when any part fails, so a partial report never looks complete.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pretrain import storage
from pretrain.config import Recipe, RecipeError, resolve, validate
from pretrain.evaluate.harness import ModelError, model_objective, offline, run_tasks
from pretrain.manifest import Manifest

RECIPE_FILES = ("recipe.yaml", "recipe.json")  # the resolved recipe a run writes to its root
PROBE = ("def mean(values):\n    return sum(values) / len(values)\n\nThe river passes the mill; 42 boats, "
         "2024-01-31. Ünïcödé — ok?\t{'a': [1, 2]}")  # encoded by both tokenizers when their files differ


@dataclasses.dataclass
class EvaluateOptions:
    """What ``evaluate_model`` measures and how (the CLI flags)."""

    tasks: list[str] | None = None  # None: every task of the task folder (the run's task set with a run root)
    task_dir: str | None = None  # a local task folder (pretrain.evaluate.tasks format)
    run_root: str | None = None  # a pretrain run root: held-out metrics, its task set, its data facts
    batch_size: int = 8
    limit: int | None = None  # the first N items of each task only
    max_batches: int | None = None  # held-out batches per source (default: the run's evaluate.max_batches)
    device: str = "cpu"
    online: bool = False  # let lm-eval fetch hub task datasets (default: offline, local cache only)


# -- the run root ---------------------------------------------------------------------------------------------
def load_run_recipe(run_root: str) -> Recipe:
    """The resolved recipe a run wrote to its root, pointed at ``run_root`` (the run may have been moved or
    copied since: its own ``run_root`` is where it ran, not where it is now)."""
    import yaml

    for name in RECIPE_FILES:
        url = storage.join(run_root, name)
        try:
            text = storage.read_text(url)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            continue
        tree = yaml.safe_load(text)
        if not isinstance(tree, dict):
            raise RecipeError(f"{url}: not a recipe (the top level must be a mapping)")
        tree["run_root"] = run_root if storage.is_remote(run_root) else str(Path(run_root).resolve())
        return resolve(validate(tree, url))
    raise RecipeError(f"{run_root}: not a pretrain run root (no {' or '.join(RECIPE_FILES)} there)")


def _manifest(url: str) -> Manifest | None:
    try:
        return Manifest.load(url)
    except FileNotFoundError:
        return None


def tokenizer_mismatch(model_dir: str, tokens: Manifest) -> str | None:
    """None when the model folder's tokenizer is the one the run's token shards were made with, else why not.

    The same ``tokenizer.json`` bytes (the hash the shards carry) is a match; otherwise the two are loaded and
    must have the same vocabulary and encode a probe text to the same ids (a re-saved copy of the same tokenizer
    passes, a retrained one does not)."""
    from pretrain.data.tokenizer.load import TokenizerError, load_tokenizer, tokenizer_hash

    try:
        model_hash = tokenizer_hash(model_dir)
    except TokenizerError:
        return f"the model folder {model_dir} has no tokenizer.json, so it cannot be matched to the run's tokenizer"
    if model_hash == tokens.extra.get("tokenizer_hash"):
        return None
    run_url = tokens.extra.get("tokenizer")
    if not run_url:
        return (f"the model's tokenizer (hash {model_hash}) is not the run's (hash "
                f"{tokens.extra.get('tokenizer_hash')}), and the tokens manifest names no tokenizer folder")
    try:
        ours, theirs = load_tokenizer(run_url), load_tokenizer(model_dir)
    except TokenizerError as err:
        return f"the run's tokenizer cannot be compared with the model's: {err}"
    a, b = ours.get_vocab(with_added_tokens=True), theirs.get_vocab(with_added_tokens=True)
    if a != b:
        return (f"the model's tokenizer ({len(b):,} tokens) is not the run's ({len(a):,} tokens, {run_url}): its "
                f"validation token shards would be read with another vocabulary")
    if ours.encode(PROBE).ids != theirs.encode(PROBE).ids:
        return f"the model's tokenizer has the run's vocabulary ({run_url}) but splits text differently"
    return None


def _load(model_dir: str, local: str, objective: str, device: str) -> tuple[Any, Any]:
    """The model (float32, eval mode) and its tokenizer, offline; a folder that does not load names itself."""
    import torch
    from transformers import AutoTokenizer

    from pretrain.model.build import auto_class

    with offline():
        try:
            model = auto_class(objective).from_pretrained(local, dtype=torch.float32).to(device).eval()
            tokenizer = AutoTokenizer.from_pretrained(local)
        except (OSError, ValueError) as err:
            raise ModelError(f"{model_dir}: cannot be loaded as a {objective.replace('_', ' ')} ({err})") from err
    return model, tokenizer


def _heldout(recipe: Recipe, model_dir: str, model: Any, tokenizer: Any, objective: str, tokens: Manifest,
             opts: EvaluateOptions) -> dict[str, Any]:
    """Held-out metrics per source on the run's validation shards, measured as the run's evaluate step does."""
    from pretrain.evaluate.heldout import heldout_by_source
    from pretrain.evaluate.step import eval_special_ids

    limit = getattr(model.config, "max_position_embeddings", None)
    seq_len = min(recipe.model.seq_len, int(limit)) if limit else recipe.model.seq_len
    vocab = int(tokens.extra.get("vocab_size") or tokens.stats.get("vocab_size") or 0)
    if vocab > int(model.config.vocab_size):
        raise ModelError(f"{model_dir}: an embedding of {model.config.vocab_size} tokens cannot read the run's "
                         f"{vocab}-token shards")
    max_batches = opts.max_batches or recipe.evaluate.max_batches
    if objective == "masked_lm":
        return heldout_by_source(model, tokens, seq_len, opts.batch_size, max_batches, "masked_lm",
                                 probability=recipe.train.mask_probability,
                                 special_ids=eval_special_ids(tokens, tokenizer), vocab_size=vocab, seed=recipe.seed)
    return heldout_by_source(model, tokens, seq_len, opts.batch_size, max_batches, "causal_lm")


def _run_task_dir(recipe: Recipe, out: str, notes: list[str]) -> str | None:
    """The run's task set: the one its evaluate step built, else built now (into ``out``/tasks) from its
    deduplicated documents; None (with a note) when the run has no data to build it from."""
    from pretrain.evaluate.tasks import INDEX_NAME, build_recipe_tasks

    built = recipe.url("evaluate", "tasks")
    if storage.exists(storage.join(built, INDEX_NAME)):
        return built
    missing = [step for step in ("dedup", "tokens") if _manifest(recipe.url(step)) is None]
    if missing:
        notes.append(f"Task set skipped: the run root {recipe.root} has no {' or '.join(missing)} manifest to "
                     f"build it from.")
        return None
    target = storage.join(out, "tasks")
    build_recipe_tasks(recipe, target)
    return target


# -- the report -----------------------------------------------------------------------------------------------
def default_out(model_url: str) -> str:
    """``./evaluate-<model folder name>``."""
    name = model_url.rstrip("/").rsplit("/", 1)[-1] or "model"
    return str(Path(f"evaluate-{name}"))


def evaluate_model(model_url: str, out: str | None = None, options: EvaluateOptions | None = None,
                   ) -> dict[str, Any]:
    """Evaluate the model folder ``model_url`` (local or s3://) and write report.json/.md/.html to ``out``.

    Returns the report (the evaluate step's schema plus ``model``, ``run_root``, ``notes`` and ``out``).
    Raises ``ModelError`` (naming the folder) for a folder that is not a causal or masked LM, ``RecipeError``
    for a run root without a recipe, ``TaskFileError`` for a malformed task file, ``ValueError`` when there is
    nothing to evaluate."""
    opts = options or EvaluateOptions()
    out = out or default_out(model_url)
    kind = vision_model_type(model_url)
    if kind is not None and opts.run_root:
        return _evaluate_vision(model_url, kind, out, opts)
    try:
        objective = model_objective(model_url)
    except ModelError as err:
        if kind is None:
            raise
        raise ModelError(f"{err}; a {kind} model is evaluated on a pretrain image run's samples: name the run with "
                         "--run-root") from None
    local = storage.local_copy(model_url)
    notes: list[str] = []
    recipe = load_run_recipe(opts.run_root) if opts.run_root else None
    metrics: dict[str, Any] | None = None
    samples: list[dict[str, str]] = []
    task_dir = opts.task_dir
    if recipe is not None:
        tokens = _manifest(recipe.url("tokens"))
        why = (f"the run root {recipe.root} has no tokens manifest" if tokens is None
               else tokenizer_mismatch(model_url, tokens))
        prompts = list(recipe.evaluate.prompts) if objective == "causal_lm" else []  # an encoder generates nothing
        if why is not None:
            notes.append(f"Held-out metrics skipped: {why}.")
        measure = tokens is not None and why is None
        if measure or prompts:
            from pretrain.evaluate.heldout import generate_samples

            model, tokenizer = _load(model_url, local, objective, opts.device)
            if measure and tokens is not None:
                metrics = _heldout(recipe, model_url, model, tokenizer, objective, tokens, opts)
            if prompts:  # with the model's own tokenizer: no need for the run's
                samples = generate_samples(model, tokenizer, prompts, recipe.evaluate.max_new_tokens, recipe.seed)
            del model
        if task_dir is None and opts.tasks != []:  # --tasks '': held-out only, no task set to build
            task_dir = _run_task_dir(recipe, out, notes)
    tasks = list(opts.tasks) if opts.tasks is not None else _all_tasks(task_dir)
    if not tasks and metrics is None:
        raise ValueError(f"{model_url}: nothing to evaluate: name harness tasks with --tasks, a task folder with "
                         f"--task-dir, or a pretrain run with --run-root"
                         + (f" ({' '.join(notes)})" if notes else ""))
    results = run_tasks(model_url, task_dir, tasks, objective, opts.batch_size, opts.limit, opts.device,
                        use_offline=not opts.online) if tasks else {}
    data = None
    if recipe is not None:
        from pretrain.data.facts import collect

        data = collect(recipe)
    report: dict[str, Any] = {
        "recipe": recipe.name if recipe else Path(local).name, "objective": objective, "model": model_url,
        "run_root": recipe.root if recipe else None, "metrics": metrics, "tasks": results, "samples": samples,
        "data": data, "notes": notes, "out": out}
    write_report(report, out)
    return report


VISION_OBJECTIVES = {"clip": "image_text_contrastive", "vit": "image_contrastive"}


def vision_model_type(model_url: str) -> str | None:
    """``clip`` or ``vit`` for an image run's exported folder (its config.json's model_type), else None."""
    import json

    try:
        config = json.loads(storage.read_text(storage.join(model_url, "config.json")))
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, ValueError):
        return None
    kind = config.get("model_type") if isinstance(config, dict) else None
    return kind if kind in VISION_OBJECTIVES else None


def _evaluate_vision(model_url: str, kind: str, out: str, opts: EvaluateOptions) -> dict[str, Any]:
    """Retrieval and the linear probe of a CLIP / ViT folder on a run root's samples (on the CPU)."""
    from pretrain.data.facts import collect
    from pretrain.evaluate.contrastive import evaluate_model as measure

    recipe = load_run_recipe(str(opts.run_root))
    samples = _manifest(recipe.url("tokens"))
    if samples is None or samples.kind != "samples":
        raise ValueError(f"{model_url}: the run root {recipe.root} has no samples manifest (an image run's tokenize "
                         "step writes it)")
    notes: list[str] = []
    retrieval = kind == "clip" and samples.extra.get("modality") == "image_text"
    if retrieval and (why := tokenizer_mismatch(model_url, samples)) is not None:
        notes.append(f"Retrieval skipped: {why}.")
        retrieval = False
    images = measure(storage.local_copy(model_url), samples, pool=recipe.evaluate.retrieval_pool,
                     probe=recipe.evaluate.probe, seed=recipe.seed,
                     batch=max(opts.batch_size, recipe.evaluate.batch_size), retrieval=retrieval)
    report: dict[str, Any] = {
        "recipe": recipe.name, "objective": VISION_OBJECTIVES[kind], "modality": images["modality"],
        "model": model_url, "run_root": recipe.root, "images": images, "metrics": None, "tasks": {}, "samples": [],
        "data": collect(recipe), "notes": notes + list(images["notes"]), "out": out}
    write_report(report, out)
    return report


def _all_tasks(task_dir: str | None) -> list[str]:
    if not task_dir:
        return []
    from pretrain.evaluate.tasks import load_index

    return sorted(load_index(task_dir)["tasks"])


def write_report(report: Mapping[str, Any], out: str) -> None:
    """report.json, report.md and report.html under ``out``; the notes (what was skipped and why) in each."""
    from pretrain.report import render_html, render_markdown

    markdown, page = render_markdown(report), render_html(report)  # the notes in the summary of each
    storage.write_json(storage.join(out, "report.json"), dict(report))
    storage.write_text(storage.join(out, "report.md"), markdown)
    storage.write_text(storage.join(out, "report.html"), page)


def _fmt(v: Any, pct: bool = False) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return "-"
    if pct:
        return f"{100 * v:.1f}%"
    return f"{v:,}" if isinstance(v, int) else f"{v:.4f}"


def summary_lines(report: Mapping[str, Any]) -> list[str]:
    """A short plain-text table of the report: held-out rows per source, then task accuracy vs chance."""
    lines = [f"model: {report.get('model')} ({report.get('objective')})"]
    metrics = report.get("metrics") or {}
    if metrics:
        rows = [*sorted((metrics.get("by_source") or {}).items()), ("all", metrics.get("overall") or {})]
        width = max(len(str(name)) for name, _ in rows)
        lines.append(f"  {'held-out':<{width}}  {'loss':>8}  {'perplexity':>10}  {'bits/byte':>9}  {'tokens':>9}")
        for name, r in rows:
            lines.append(f"  {name:<{width}}  {_fmt(r.get('loss')):>8}  {_fmt(r.get('perplexity')):>10}  "
                         f"{_fmt(r.get('bits_per_byte')):>9}  {_fmt(r.get('tokens')):>9}")
    tasks = report.get("tasks") or {}
    if tasks:
        width = max(len(n) for n in tasks)
        lines.append(f"  {'task':<{width}}  {'accuracy':>8}  {'chance':>8}  {'items':>6}")
        for name, r in sorted(tasks.items()):
            lines.append(f"  {name:<{width}}  {_fmt(r.get('accuracy'), True):>8}  {_fmt(r.get('chance'), True):>8}  "
                         f"{_fmt(r.get('items')):>6}")
    images = report.get("images") or {}
    r, p = images.get("retrieval") or {}, images.get("probe") or {}
    if r.get("trained"):
        lines.append(f"  {'retrieval (pool ' + str(r.get('pool')) + ')':<24}  {'trained':>8}  {'untrained':>9}  "
                     f"{'chance':>8}")
        for d, k in (("i2t", 1), ("i2t", 5), ("t2i", 1), ("t2i", 5)):
            lines.append(f"  {d + ' recall@' + str(k):<24}  {_fmt(r['trained'].get(f'{d}_recall_at_{k}'), True):>8}  "
                         f"{_fmt((r.get('untrained') or {}).get(f'{d}_recall_at_{k}'), True):>9}  "
                         f"{_fmt((r.get('chance') or {}).get(f'recall_at_{k}'), True):>8}")
    if p.get("trained"):
        lines.append(f"  {'linear probe accuracy':<24}  {_fmt(p['trained'].get('accuracy'), True):>8}  "
                     f"{_fmt((p.get('untrained') or {}).get('accuracy'), True):>9}  {_fmt(p.get('chance'), True):>8}")
    lines += [f"  note: {n}" for n in report.get("notes") or []]
    return lines


__all__ = ["EvaluateOptions", "default_out", "evaluate_model", "load_run_recipe", "summary_lines",
           "tokenizer_mismatch", "vision_model_type", "write_report"]
