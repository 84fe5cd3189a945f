"""The evaluate step: load the exported model as any user would, measure, and write the report."""

from __future__ import annotations

from pretrain import storage
from pretrain.config import Recipe, fingerprint
from pretrain.evaluate.heldout import generate_samples, heldout_metrics, masked_heldout_metrics
from pretrain.manifest import Manifest, reuse
from pretrain.report import render_html, render_markdown
from pretrain.tokens import SequentialWindows, split_urls


def pipeline_stats(recipe: Recipe) -> dict[str, object]:
    """The headline counts of the data steps, read from their manifests under the run root."""
    out: dict[str, object] = {}
    try:
        dedup = Manifest.load(recipe.url("dedup"))
        tokens = Manifest.load(recipe.url("tokens"))
    except FileNotFoundError:
        return out
    filtered = dedup.extra.get("filter_stats", {})
    out["documents in"] = filtered.get("documents_in")
    out["documents kept by filters"] = filtered.get("kept")
    out["duplicates removed (exact + fuzzy)"] = dedup.stats.get("duplicates")
    out["documents after dedup"] = dedup.stats.get("documents_out")
    out["train tokens"] = tokens.stats.get("train_tokens")
    out["validation tokens"] = tokens.stats.get("val_tokens")
    return out


def data_ledger(recipe: Recipe) -> dict | None:
    """The documents ledger of the data steps (see ``pretrain.data.ledger``), or None before they ran."""
    try:
        return Manifest.load(recipe.url("dedup")).extra.get("ledger")
    except FileNotFoundError:
        return None


def eval_special_ids(tokens: Manifest, tokenizer) -> dict[str, int | None]:
    """The special ids training used (the tokens manifest), else the exported tokenizer's own."""
    extra = tokens.extra
    return {"eos": extra.get("eos_id", tokenizer.eos_token_id), "pad": extra.get("pad_id", tokenizer.pad_token_id),
            "mask": extra.get("mask_id", tokenizer.mask_token_id)}


def evaluate(
    recipe: Recipe, model_manifest: Manifest, tokens: Manifest, checkpoints: Manifest | None = None
) -> Manifest:
    root = recipe.url("evaluate")
    masking = ("masked_lm", recipe.train.mask_probability) if recipe.train.objective == "masked_lm" else ()
    fp = fingerprint(recipe.evaluate.model_dump(), model_manifest.fingerprint, tokens.fingerprint, *masking)
    if (done := reuse(root, fp)) is not None:
        return done
    import torch
    from transformers import AutoTokenizer

    from pretrain.model.build import auto_class

    local = storage.local_copy(model_manifest.root)
    model = auto_class(recipe.train.objective).from_pretrained(local, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(local)
    val = SequentialWindows(split_urls(tokens.shards, "val"), recipe.model.seq_len)
    if recipe.train.objective == "masked_lm":  # an encoder generates nothing: no samples
        metrics = masked_heldout_metrics(model, val, recipe.evaluate.batch_size, recipe.evaluate.max_batches,
                                         probability=recipe.train.mask_probability,
                                         special_ids=eval_special_ids(tokens, tokenizer),
                                         vocab_size=int(tokens.extra["vocab_size"]), seed=recipe.seed)
        samples: list[dict[str, str]] = []
    else:
        metrics = heldout_metrics(model, val, recipe.evaluate.batch_size, recipe.evaluate.max_batches)
        samples = generate_samples(model, tokenizer, recipe.evaluate.prompts, recipe.evaluate.max_new_tokens,
                                   recipe.seed)
    report = {"recipe": recipe.name, "metrics": metrics, "samples": samples,
              "train": checkpoints.stats if checkpoints else {},
              "history": checkpoints.extra.get("history", []) if checkpoints else [],
              "steps": pipeline_stats(recipe), "ledger": data_ledger(recipe),
              "mixture": tokens.extra.get("mixture", {}),
              "trained_tokens_by_source": checkpoints.extra.get("trained_tokens_by_source") if checkpoints else None}
    markdown, html = render_markdown(report), render_html(report)
    storage.write_text(storage.join(root, "report.md"), markdown)
    storage.write_text(storage.join(root, "report.html"), html)
    storage.write_json(storage.join(root, "report.json"), report)
    result = Manifest(kind="evaluation", root=root, fingerprint=fp, stats=metrics,
                      config=recipe.evaluate.model_dump(),
                      extra={"report_html": storage.join(root, "report.html"),
                             "report_md": storage.join(root, "report.md"), "samples": samples})
    result.save()
    return result
