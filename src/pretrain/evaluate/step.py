"""The evaluate step: load the exported model as any user would, measure, and write the report and the card.

Held-out loss, perplexity and bits per byte per source (``heldout``), task accuracy on the run's own cloze set
built from validation documents and decontaminated against the train split (``tasks``, scored by lm-eval or
by pseudo-log-likelihood for a masked LM, ``harness``), samples, and the data facts of the run
(``pretrain.data.facts``). The report (JSON, Markdown, one self-contained HTML page) is written first and the
manifest last; the exported folder's model card is then rewritten with the results.

An image run (``recipe.modality`` image or image_text) is measured by ``pretrain.evaluate.contrastive`` instead:
zero-shot retrieval (image_text) and a linear probe on frozen features, each for the trained model, an untrained
model of the same shape and chance; its metrics have flat names (``retrieval_i2t_recall_at_1``, ...).
"""

from __future__ import annotations

from typing import Any

from pretrain import storage
from pretrain.config import Recipe, fingerprint
from pretrain.evaluate.heldout import generate_samples, heldout_by_source
from pretrain.manifest import Manifest, reuse
from pretrain.report import render_html, render_markdown


def pipeline_stats(recipe: Recipe) -> dict[str, object]:
    """The headline counts of the data steps, read from their manifests under the run root."""
    out: dict[str, object] = {}
    try:
        dedup = Manifest.load(recipe.url("dedup"))
        tokens = Manifest.load(recipe.url("tokens"))
    except FileNotFoundError:
        return out
    filtered = dedup.extra.get("filter_stats", {})
    unit = "samples" if tokens.kind == "samples" else "documents"
    out[f"{unit} in"] = filtered.get("documents_in")
    out[f"{unit} kept by filters"] = filtered.get("kept")
    out["duplicates removed (exact + fuzzy)"] = dedup.stats.get("duplicates")
    out[f"{unit} after dedup"] = dedup.stats.get("documents_out")
    if tokens.kind == "samples":  # an image run
        out["train samples"] = tokens.stats.get("train_samples")
        out["validation samples"] = tokens.stats.get("val_samples")
        out["samples without a caption (left out)"] = tokens.stats.get("no_caption")
        return out
    out["train tokens"] = tokens.stats.get("train_tokens")
    out["validation tokens"] = tokens.stats.get("val_tokens")
    return out


def data_ledger(recipe: Recipe) -> dict | None:
    """The documents ledger of the data steps (see ``pretrain.data.ledger``), or None before they ran."""
    try:
        return Manifest.load(recipe.url("dedup")).extra.get("ledger")
    except FileNotFoundError:
        return None


def data_facts(recipe: Recipe, checkpoints: Manifest | None) -> dict[str, Any] | None:
    """``pretrain.data.facts.collect`` with what the loader trained on; None when the data steps left nothing
    (a run whose tokens were made elsewhere)."""
    from pretrain.data.facts import collect

    try:
        data = collect(recipe)
    except FileNotFoundError:
        return None
    if checkpoints is not None and checkpoints.extra.get("trained_tokens_by_source"):
        data["trained_tokens_by_source"] = checkpoints.extra["trained_tokens_by_source"]
    return data


def eval_special_ids(tokens: Manifest, tokenizer) -> dict[str, int | None]:
    """The special ids training used (the tokens manifest), else the exported tokenizer's own."""
    extra = tokens.extra
    return {"eos": extra.get("eos_id", tokenizer.eos_token_id), "pad": extra.get("pad_id", tokenizer.pad_token_id),
            "mask": extra.get("mask_id", tokenizer.mask_token_id)}


def task_accuracy(recipe: Recipe, model_dir: str) -> tuple[dict[str, Any], str | None]:
    """Accuracy on the recipe's tasks: the run's own task set (built once per run under ``evaluate/tasks``) and
    any other lm-eval task named in ``evaluate.tasks``. Returns (results, why none when empty)."""
    from pretrain.evaluate.harness import run_tasks
    from pretrain.evaluate.tasks import TaskOptions, build_recipe_tasks

    cfg = recipe.evaluate
    if not cfg.tasks:
        return {}, "evaluate.tasks is empty"
    try:
        index = build_recipe_tasks(recipe, options=TaskOptions(max_items=cfg.task_items))
    except FileNotFoundError as e:
        return {}, f"no task set: the data steps' documents are not under the run root ({e})"
    built = {name for name, row in index.get("tasks", index).items() if isinstance(row, dict) and row.get("items")}
    local_names = {"next_line", "next_sentence"}
    wanted = [t for t in cfg.tasks if t in built or t not in local_names]
    skipped = sorted(set(cfg.tasks) - set(wanted))
    results = run_tasks(model_dir, recipe.url("evaluate", "tasks"), wanted, recipe.train.objective,
                        batch_size=cfg.batch_size, seed=recipe.seed) if wanted else {}
    why = f"no items for {', '.join(skipped)} in this run's validation documents" if skipped else None
    return results, why


def evaluate(
    recipe: Recipe, model_manifest: Manifest, tokens: Manifest, checkpoints: Manifest | None = None
) -> Manifest:
    if recipe.modality != "text":
        return evaluate_images(recipe, model_manifest, tokens, checkpoints)
    root = recipe.url("evaluate")
    masking = ("masked_lm", recipe.train.mask_probability) if recipe.train.objective == "masked_lm" else ()
    fp = fingerprint(recipe.evaluate.model_dump(), model_manifest.fingerprint, tokens.fingerprint, *masking)
    if (done := reuse(root, fp)) is not None:
        return done
    import torch
    from transformers import AutoTokenizer

    from pretrain.model.build import auto_class

    objective = recipe.train.objective
    local = storage.local_copy(model_manifest.root)
    model = auto_class(objective).from_pretrained(local, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(local)
    metrics = heldout_by_source(model, tokens, recipe.model.seq_len, recipe.evaluate.batch_size,
                                recipe.evaluate.max_batches, objective, probability=recipe.train.mask_probability,
                                special_ids=eval_special_ids(tokens, tokenizer),
                                vocab_size=int(tokens.extra["vocab_size"]), seed=recipe.seed)
    samples: list[dict[str, str]] = []
    if objective == "causal_lm":  # an encoder generates nothing: no samples
        samples = generate_samples(model, tokenizer, recipe.evaluate.prompts, recipe.evaluate.max_new_tokens,
                                   recipe.seed)
    del model
    tasks, tasks_note = task_accuracy(recipe, local)
    data = data_facts(recipe, checkpoints)
    report = {"recipe": recipe.name, "objective": objective, "metrics": metrics, "tasks": tasks,
              "notes": [f"Tasks: {tasks_note}."] if tasks_note else [], "samples": samples,
              "train": checkpoints.stats if checkpoints else {},
              "history": checkpoints.extra.get("history", []) if checkpoints else [],
              "data": data, "ledger": data_ledger(recipe), "steps": pipeline_stats(recipe)}
    markdown, html = render_markdown(report), render_html(report)
    storage.write_text(storage.join(root, "report.md"), markdown)
    storage.write_text(storage.join(root, "report.html"), html)
    storage.write_json(storage.join(root, "report.json"), report)
    write_card(recipe, model_manifest, report)
    overall = metrics["overall"]
    stats = {**overall, "by_source": metrics["by_source"],
             "tasks": {name: row.get("accuracy") for name, row in tasks.items()}}
    result = Manifest(kind="evaluation", root=root, fingerprint=fp, stats=stats,
                      config=recipe.evaluate.model_dump(),
                      extra={"report_html": storage.join(root, "report.html"),
                             "report_md": storage.join(root, "report.md"), "samples": samples,
                             "tasks": tasks})
    result.save()
    return result


def evaluate_images(recipe: Recipe, model_manifest: Manifest, samples: Manifest,
                    checkpoints: Manifest | None = None) -> Manifest:
    """An image run's evaluation (``samples``: the tokenize step's samples manifest): retrieval and the linear
    probe against an untrained twin and chance, then the report and the card, as for text."""
    from pretrain.evaluate.contrastive import evaluate_model, flat_metrics

    root = recipe.url("evaluate")
    fp = fingerprint(recipe.evaluate.model_dump(), model_manifest.fingerprint, samples.fingerprint, recipe.modality,
                     recipe.seed)
    if (done := reuse(root, fp)) is not None:
        return done
    cfg = recipe.evaluate
    images = evaluate_model(storage.local_copy(model_manifest.root), samples, pool=cfg.retrieval_pool,
                            probe=cfg.probe, seed=recipe.seed, batch=cfg.batch_size)
    report = {"recipe": recipe.name, "objective": recipe.train.objective, "modality": recipe.modality,
              "images": images, "metrics": {}, "tasks": {}, "notes": list(images["notes"]), "samples": [],
              "train": checkpoints.stats if checkpoints else {},
              "history": checkpoints.extra.get("history", []) if checkpoints else [],
              "data": data_facts(recipe, checkpoints), "ledger": data_ledger(recipe), "steps": pipeline_stats(recipe)}
    markdown, html = render_markdown(report), render_html(report)
    storage.write_text(storage.join(root, "report.md"), markdown)
    storage.write_text(storage.join(root, "report.html"), html)
    storage.write_json(storage.join(root, "report.json"), report)
    write_card(recipe, model_manifest, report)
    result = Manifest(kind="evaluation", root=root, fingerprint=fp, stats=flat_metrics(images),
                      config=cfg.model_dump(),
                      extra={"report_html": storage.join(root, "report.html"),
                             "report_md": storage.join(root, "report.md"),
                             "images": {k: v for k, v in images.items() if k != "examples"}})
    result.save()
    return result


def write_card(recipe: Recipe, model_manifest: Manifest, report: dict[str, Any]) -> None:
    """The exported folder's README.md again, now with the evaluation results (model-index too)."""
    from transformers import AutoConfig

    from pretrain.model.card import render_card

    local = storage.local_copy(model_manifest.root)
    config = AutoConfig.from_pretrained(local)
    card = render_card(recipe, config, parameters=int(model_manifest.stats["parameters"]), train=report["train"],
                       history=report["history"], data=report["data"], metrics=report["metrics"],
                       tasks=report["tasks"], images=report.get("images"))
    storage.write_text(storage.join(model_manifest.root, "README.md"), card)  # atomic: the old or the new card
