"""The exported model's ``README.md``: a Hugging Face model card with metadata, written from what the run recorded.

An image run's card is ``pretrain.model.card_images``.

YAML front matter (``library_name``, ``pipeline_tag``, ``tags``, ``license`` when every training document carries
the same one, and ``model-index`` with the evaluation results) and sections: the model, tokenizer, training,
compute, hardware, lineage, data, knowledge cutoff, data curation with its known limits, and evaluation.
The export writes it before any evaluation (its results say so); the evaluate step writes it again with them.
Nothing here is estimated silently: a number the run did not record is shown as "not recorded".
"""

from __future__ import annotations

from typing import Any

import yaml

from pretrain.config import Recipe

PIPELINES = {"causal_lm": ("text-generation", "causal language model", "AutoModelForCausalLM"),
             "masked_lm": ("fill-mask", "masked language model (bidirectional encoder)", "AutoModelForMaskedLM")}
# Licence ids the Hugging Face Hub knows (lowercased SPDX); any other is written as ``other`` with its name.
HUB_LICENSES = frozenset({
    "apache-2.0", "mit", "afl-3.0", "artistic-2.0", "bsl-1.0", "bsd", "bsd-2-clause", "bsd-3-clause",
    "bsd-3-clause-clear", "cc", "cc0-1.0", "cc-by-2.0", "cc-by-2.5", "cc-by-3.0", "cc-by-4.0", "cc-by-sa-3.0",
    "cc-by-sa-4.0", "cc-by-nc-2.0", "cc-by-nc-3.0", "cc-by-nc-4.0", "cc-by-nd-4.0", "cc-by-nc-nd-3.0",
    "cc-by-nc-nd-4.0", "cc-by-nc-sa-2.0", "cc-by-nc-sa-3.0", "cc-by-nc-sa-4.0", "cdla-sharing-1.0",
    "cdla-permissive-1.0", "cdla-permissive-2.0", "wtfpl", "ecl-2.0", "epl-1.0", "epl-2.0", "eupl-1.1", "agpl-3.0",
    "gfdl", "gpl", "gpl-2.0", "gpl-3.0", "lgpl", "lgpl-2.1", "lgpl-3.0", "isc", "lppl-1.3c", "ms-pl", "mpl-2.0",
    "odc-by", "odbl", "osl-3.0", "postgresql", "ofl-1.1", "ncsa", "unlicense", "zlib", "pddl",
})
NOT_RECORDED = "not recorded"


# -- numbers as text ------------------------------------------------------------------------------------------
def _n(value: Any, digits: int = 4) -> str:
    """A number for a table: ints with thousands separators, floats to ``digits`` significant digits."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int) or (value.is_integer() and abs(value) < 1e15):  # counts that JSON made floats
        return f"{int(value):,}"
    return f"{value:.{digits}g}"


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.2f}%"


def flops_text(flops: float | None) -> str:
    return NOT_RECORDED if flops is None else f"{flops:.3e}"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return out + ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]


# -- facts derived from the run -------------------------------------------------------------------------------
def lineage(recipe: Recipe, image_digest: str | None = None) -> dict[str, Any]:
    """Package version, git commit (a development checkout), the training image on a cluster and its digest."""
    from pretrain import __version__
    from pretrain.config import code_version

    code = code_version()
    commit = code.split("+g", 1)[1].split(".", 1)[0] if "+g" in code else None
    image = None
    if recipe.train.launcher != "local":
        image = recipe.cluster.training_image(recipe.train.resources.gpus)
        if image_digest is None and "@sha256:" in image:
            image_digest = image.split("@", 1)[1]
    return {"package_version": __version__, "code_version": code, "git_commit": commit, "image": image,
            "image_digest": image_digest, "recipe": "recipe.json"}


def trained_tokens(recipe: Recipe, train: dict[str, Any], data: dict[str, Any] | None = None) -> int | None:
    """Tokens the model trained on: the loader's count per source when recorded, else steps x global batch."""
    by_source = (data or {}).get("trained_tokens_by_source")
    if by_source:
        return int(sum(by_source.values()))
    steps = train.get("steps")
    if steps is None:
        return None
    t = recipe.train
    return int(steps) * t.micro_batch_size * t.grad_accum_steps * recipe.model.seq_len * int(
        train.get("world_size") or t.nnodes * t.nproc_per_node)


def training_seconds(train: dict[str, Any], history: list[dict[str, Any]] | None) -> tuple[float | None, str]:
    """Wall-clock training time and where it came from: recorded, else the logged step times added up (each
    logged row's ``step_seconds`` is the mean over the steps since the previous row; evaluations and checkpoints
    are left out)."""
    if train.get("wall_seconds") is not None:
        return float(train["wall_seconds"]), "recorded"
    rows = sorted((r for r in history or [] if r.get("step_seconds") is not None), key=lambda r: r["step"])
    total, previous = 0.0, 0
    for row in rows:
        total += float(row["step_seconds"]) * max(int(row["step"]) - previous, 0)
        previous = int(row["step"])
    return (total, "logged step times added up") if rows else (None, NOT_RECORDED)


def uniform_license(data: dict[str, Any] | None) -> str | None:
    """The licence every training document carries, or None (several, some without, or not known)."""
    found: set[str] = set()
    for row in ((data or {}).get("sources") or {}).values():
        found |= {k for k, v in (row.get("licenses") or {}).items() if v}
    return found.pop() if len(found) == 1 and "" not in found else None


def model_index(name: str, objective: str, metrics: dict[str, Any] | None,
                tasks: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The card's ``model-index``: held-out loss, perplexity and bits per byte (overall and per source), masked
    accuracy, and each task's accuracy. Missing values are left out, never written as null."""
    pipeline = PIPELINES[objective][0]
    results = []

    def heldout(row: dict[str, Any], dataset: str, source: str | None) -> None:
        pairs = [("loss", "loss", "held-out loss (nats/token)"), ("perplexity", "perplexity", "perplexity"),
                 ("bits_per_byte", "bits_per_byte", "bits per byte"),
                 ("masked_accuracy", "accuracy", "masked-token accuracy")]
        found = [{"type": kind, "value": round(float(row[key]), 6), "name": label} for key, kind, label in pairs
                 if row.get(key) is not None]
        if found:
            results.append({"task": {"type": pipeline, "name": "held-out language modeling"},
                            "dataset": {"type": "held-out", "name": dataset, "split": "validation",
                                        **({"config": source} if source else {})},
                            "metrics": found})

    if metrics:
        if metrics.get("overall"):
            heldout(metrics["overall"], f"{name} validation split (all sources)", None)
        for source, row in sorted((metrics.get("by_source") or {}).items()):
            heldout(row, f"{name} validation split: {source}", source)
    for task, row in sorted((tasks or {}).items()):
        if row.get("accuracy") is None:
            continue
        chance = row.get("chance")
        results.append({"task": {"type": "multiple-choice", "name": task},
                        "dataset": {"type": task, "name": task, "split": "validation"},
                        "metrics": [{"type": "accuracy", "value": round(float(row["accuracy"]), 6),
                                     "name": "accuracy" + (f" (chance {chance:.3g})" if chance is not None else "")}]})
    return [{"name": name, "results": results}] if results else []


# -- the card -------------------------------------------------------------------------------------------------
def front_matter(pipeline: str, tags: list[str], data: dict[str, Any] | None, index: list[dict[str, Any]]) -> str:
    """The card's YAML metadata: library, pipeline tag, tags, the licence when every training document shares one
    (a Hub id, else ``other`` with its name), and the model-index results when there are any."""
    meta: dict[str, Any] = {"library_name": "transformers", "pipeline_tag": pipeline, "tags": tags}
    lic = uniform_license(data)
    if lic:
        if lic.lower() in HUB_LICENSES:
            meta["license"] = lic.lower()
        else:
            meta["license"], meta["license_name"] = "other", lic.lower()
    if index:
        meta["model-index"] = index
    return yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)


def render_card(recipe: Recipe, config, *, parameters: int, train: dict[str, Any] | None = None,
                history: list[dict[str, Any]] | None = None, data: dict[str, Any] | None = None,
                metrics: dict[str, Any] | None = None, tasks: dict[str, Any] | None = None,
                lineage_info: dict[str, Any] | None = None, images: dict[str, Any] | None = None) -> str:
    """README.md text for the exported model folder.

    ``config``: the model's ``transformers`` config; ``train``: the checkpoints manifest's stats (steps,
    world_size, device, final_val_loss, ..., ``wall_seconds`` when recorded); ``history``: train/metrics.jsonl
    rows; ``data``: ``pretrain.data.facts.collect``; ``metrics`` / ``tasks``: the evaluation's held-out
    results and task accuracies (None before evaluation); ``lineage_info``: ``lineage(recipe)`` by default.
    An image run's card (``render_image_card``) takes ``images``, the evaluation's retrieval and probe results.
    """
    if recipe.modality != "text":
        from pretrain.model.card_images import render_image_card

        return render_image_card(recipe, config, parameters=parameters, train=train, history=history, data=data,
                                 images=images, lineage_info=lineage_info)
    train = train or {}
    objective = recipe.train.objective
    pipeline, kind, auto = PIPELINES[objective]
    info = lineage_info if lineage_info is not None else lineage(recipe)
    front = front_matter(pipeline, ["pretrain", "base-model", objective.replace("_", "-")], data,
                         model_index(recipe.name, objective, metrics, tasks))
    body = [f"# {recipe.name}", "",
            f"A base (pre-trained, not instruction-tuned) {kind} trained by the `pretrain` platform from recipe "
            f"`{recipe.name}`. Load it with `{auto}.from_pretrained` and `AutoTokenizer.from_pretrained`.", ""]
    body += _model(recipe, config, parameters)
    body += _training(recipe, config, train, history, data, info)
    body += _data(data)
    body += _cutoff(data)
    body += _curation(data)
    body += _evaluation(metrics, tasks, objective)
    body += ["## Use", "", "```python", f"from transformers import AutoTokenizer, {auto}", "",
             f'model = {auto}.from_pretrained("path/to/this/folder")',
             'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")', "```", ""]
    return f"---\n{front}---\n\n" + "\n".join(body)


def _model(recipe: Recipe, config, parameters: int) -> list[str]:
    get = lambda key, default=None: getattr(config, key, default)  # noqa: E731
    rows = [["architecture", f"{get('model_type')} ({', '.join(get('architectures') or []) or '-'})"],
            ["parameters", _n(int(parameters))],
            ["layers", _n(get("num_hidden_layers"))], ["hidden size", _n(get("hidden_size"))],
            ["attention heads", _n(get("num_attention_heads"))],
            ["key/value heads", _n(get("num_key_value_heads") or get("num_attention_heads"))],
            ["MLP size", _n(get("intermediate_size"))], ["context (tokens)", _n(recipe.model.seq_len)],
            ["vocabulary", _n(get("vocab_size"))], ["tied embeddings", str(bool(get("tie_word_embeddings", True)))]]
    tok = recipe.tokenizer
    if recipe.model.init_from or tok.path:
        origin = f"Loaded from `{recipe.model.init_from or tok.path}`; vocabulary {_n(get('vocab_size'))}"
    else:
        origin = (f"{'Byte-level BPE' if tok.kind == 'bpe' else 'Unigram'} trained on up to {tok.train_chars:,} "
                  f"characters of the run's documents ({tok.sample} across sources); vocabulary "
                  f"{_n(get('vocab_size'))} with `<|endoftext|>`, `<|pad|>` and `<|mask|>`")
    return ["## Model", "", *_table(["", ""], rows), "",
            "## Tokenizer", "", f"{origin}; saved in this folder.", ""]


def _training(recipe: Recipe, config, train: dict[str, Any], history: list[dict[str, Any]] | None,
              data: dict[str, Any] | None, info: dict[str, Any]) -> list[str]:
    from pretrain.model.flops import flops_per_token

    t = recipe.train
    tokens = trained_tokens(recipe, train, data)
    world = int(train.get("world_size") or t.nnodes * t.nproc_per_node)
    per_token = flops_per_token(config, recipe.model.seq_len, t.objective, t.mask_probability)
    total = per_token * tokens if tokens is not None else None
    seconds, how = training_seconds(train, history)
    rows = [["objective", t.objective + (f" ({t.mask_probability:.0%} of tokens masked)" if t.objective == "masked_lm"
                                         else "")],
            ["steps", _n(train.get("steps"))], ["tokens trained", _n(tokens)],
            ["global batch (tokens)", _n(t.micro_batch_size * t.grad_accum_steps * world * recipe.model.seq_len)],
            ["optimizer", t.optimizer], ["schedule", f"{t.schedule}, peak LR {t.lr:g}, {t.warmup_steps} warmup steps"],
            ["precision", t.precision], ["parallelism", f"{t.parallel}, {world} ranks"],
            ["initial / final validation loss", f"{_n(train.get('initial_val_loss'))} / "
                                                f"{_n(train.get('final_val_loss'))}"]]
    if recipe.model.init_from:
        rows.append(["continued from", f"`{recipe.model.init_from}`"])
    compute = [["training FLOPs per token", f"{per_token:.3e} (matmuls, forward + backward)"],
               ["training FLOPs", flops_text(total) + (" (FLOPs per token x tokens trained)" if total else "")],
               *_time_rows(train, seconds, how, world)]
    return ["## Training", "", *_table(["", ""], rows), "", "## Compute", "", *_table(["", ""], compute), "",
            *_hardware_lineage(recipe, train, world, info)]


def _time_rows(train: dict[str, Any], seconds: float | None, how: str, world: int) -> list[list[str]]:
    """Wall-clock training time and device-hours (as recorded, else the logged step times added up)."""
    unit = {"cuda": "GPU-hours", "cpu": "CPU process-hours"}.get(str(train.get("device")), "device-hours")
    return [["wall-clock training time", f"{seconds / 3600:.3f} h ({how})" if seconds is not None else NOT_RECORDED],
            [unit, f"{seconds * world / 3600:.3f} ({world} devices x wall)" if seconds is not None
             else NOT_RECORDED]]


def _hardware_lineage(recipe: Recipe, train: dict[str, Any], world: int, info: dict[str, Any]) -> list[str]:
    """The Hardware and Lineage sections (any objective)."""
    t = recipe.train
    hardware = [["device", str(train.get("device") or NOT_RECORDED)],
                ["devices", f"{world} ({t.nnodes} node(s) x {t.nproc_per_node} per node)"]]
    if train.get("device_name"):
        hardware.append(["device model", str(train["device_name"])])
    if train.get("peak_flops_source"):
        hardware.append(["peak FLOP/s from", str(train["peak_flops_source"])])
    if t.launcher != "local":
        hardware.append(["launcher", f"{t.launcher} on Kubernetes, {t.resources.gpus} GPU(s) per node"])
    lineage_rows = [["pretrain version", f"{info.get('package_version')} (`{info.get('code_version')}`)"],
                    ["git commit", f"`{info['git_commit']}`" if info.get("git_commit") else NOT_RECORDED],
                    ["training image", f"`{info['image']}`" if info.get("image") else "none (trained locally)"],
                    ["image digest", f"`{info['image_digest']}`" if info.get("image_digest") else
                     ("-" if not info.get("image") else NOT_RECORDED)],
                    ["resolved recipe", f"`{info.get('recipe') or 'recipe.json'}` in this folder"]]
    return ["## Hardware", "", *_table(["", ""], hardware), "", "## Lineage", "", *_table(["", ""], lineage_rows), ""]


def _data(data: dict[str, Any] | None) -> list[str]:
    out = ["## Data", ""]
    if not data or not data.get("sources"):
        return [*out, "Not recorded: the data steps' manifests were not available when this card was written.", ""]
    rows = []
    for source, r in data["sources"].items():
        lic = ", ".join(f"{k or '(none)'} ({_n(v)})" for k, v in sorted(r.get("licenses", {}).items())) or "-"
        rows.append([source, _n(r.get("documents")), _n(r.get("train_tokens")), _n(r.get("val_tokens")), lic])
    out += _table(["source", "documents", "train tokens", "validation tokens", "licences (documents)"], rows)
    mixture = data.get("mixture") or {}
    trained = data.get("trained_tokens_by_source") or {}
    if trained:
        total = sum(trained.values()) or 1
        out += ["", "Share of the tokens trained on: " + ", ".join(
            f"{s} {_pct(v / total)}" for s, v in sorted(trained.items())) + "."]
    elif mixture.get("weights"):
        out += ["", "Mixture weights: " + ", ".join(f"{s} {_n(w)}" for s, w in sorted(mixture["weights"].items()))
                + "."]
    profiles = (data.get("filters") or {}).get("profiles") or {}
    drops = data.get("drops") or {}
    out += ["", "### Filters", ""]
    if profiles:
        out += ["Rule profile per source: " + ", ".join(f"{s} `{p}`" for s, p in sorted(profiles.items())) + "."]
    missing = (data.get("filters") or {}).get("rules_missing") or []
    if missing:
        out += ["", f"Not applied (their modules were not installed): {', '.join(missing)}."]
    if drops:
        out += ["", *_table(["rule", "documents removed", "by source"],
                            [[f"`{rule}`", _n(r["documents"]),
                              ", ".join(f"{s} {_n(n)}" for s, n in sorted(r.get("by_source", {}).items()))]
                             for rule, r in drops.items()])]
    else:
        out += ["", "No document was removed by a filter rule."]
    dedup = data.get("dedup") or {}
    out += ["", "### Deduplication", ""]
    cfg = dedup.get("config") or {}
    if cfg:
        kinds = [k for k in ("exact", "fuzzy") if cfg.get(k)]
        out += [f"Across all sources: {' and '.join(kinds) or 'none'}"
                + (f" (MinHash, {cfg.get('shingle_size')}-word shingles, {cfg.get('bands')} bands x {cfg.get('rows')}"
                   f" rows, Jaccard >= {cfg.get('threshold')})" if cfg.get("fuzzy") else "")
                + f"; each cluster keeps its {cfg.get('representative', 'longest')} document.", ""]
    rows = [[s, _n(r["documents_in"]), _n(r["exact"]), _n(r["fuzzy"]), _n(r["documents_out"])]
            for s, r in sorted((dedup.get("by_source") or {}).items())]
    out += _table(["source", "documents in", "exact copies removed", "near copies removed", "documents out"], rows) \
        if rows else ["Not recorded."]
    return [*out, ""]


def _cutoff(data: dict[str, Any] | None) -> list[str]:
    out = ["## Knowledge cutoff", ""]
    dates = (data or {}).get("dates")
    if not dates:
        return [*out, "Not recorded: the data steps' manifests were not available when this card was written.", ""]
    by_source = dates.get("by_source") or {}
    undated = sum(r.get("undated", 0) for r in by_source.values())
    documents = undated + sum(r.get("dated", 0) for r in by_source.values())
    if dates.get("knowledge_cutoff"):
        out += [f"**Knowledge cutoff: {dates['knowledge_cutoff']}**, the latest document date in the train split "
                "(documents that reached the training token shards; dropped, duplicate and validation documents do "
                "not count). The model saw no training document dated after this day, and likely little about the "
                "weeks before it. A date is what the source records (a crawl time, a revision or last-commit time, "
                "a date field), not when the events described happened; "
                f"{_n(undated)} of {_n(documents)} training documents carry no date (counted, never guessed) and may "
                "be later."]
    else:
        out += [f"**Knowledge cutoff: unknown.** None of the {_n(documents)} training documents carries a date "
                "(dates are counted, never guessed)."]
    rows = [[s, _n(r.get("dated")), _n(r.get("undated")) + (f" ({_n(r['invalid'])} unreadable)" if r.get("invalid")
                                                             else ""),
             r.get("earliest") or "-", r.get("latest") or "-",
             ", ".join(f"{y}: {_n(n)}" for y, n in sorted((r.get("by_year") or {}).items())) or "-"]
            for s, r in by_source.items()]
    return [*out, "", *_table(["source", "dated", "undated", "earliest", "latest", "documents per year"], rows), ""]


def _curation(data: dict[str, Any] | None) -> list[str]:
    out = ["## Data curation", ""]
    cur = (data or {}).get("curation") or {}
    if cur:
        out += ["Share of each source's ingested documents removed as toxic (word lists, classifier), as low "
                "quality (length, repetition, quality heuristics, gibberish, code rules), as duplicates, and for "
                "other reasons (language, blocked URLs, licences); PII redacted to placeholders in kept documents.",
                ""]
        rows = []
        for s, r in cur.items():
            removed = sum(r.get(k, 0.0) for k in ("toxic", "low_quality", "duplicate", "other_dropped"))
            pii = ", ".join(f"{k} {_n(v)}" for k, v in sorted((r.get("pii_redactions") or {}).items())) or "none"
            rows.append([s, _n(r.get("documents_in")), _pct(r.get("toxic")), _pct(r.get("low_quality")),
                         _pct(r.get("duplicate")), _pct(r.get("other_dropped")), _pct(1 - removed), pii])
        out += _table(["source", "documents in", "toxic", "low quality", "duplicate", "other", "kept",
                       "PII redactions"], rows)
    else:
        out += ["Not recorded: the data steps' manifests were not available when this card was written."]
    missing = ((data or {}).get("filters") or {}).get("rules_missing") or []
    out += ["", "### Known limitations and bias caveats", "",
            "- This is a base model: it continues text. It is not instruction-tuned or safety-aligned and can "
            "produce false, biased, offensive or private-looking text.",
            "- Toxicity is filtered by word lists (and a classifier when the recipe names one): toxic text without "
            "listed words passes, and text that merely quotes or discusses listed words (counter-speech, reclaimed "
            "terms, health topics) can be removed, under-representing the communities it concerns. The built-in list "
            "is English: other languages are filtered only when the recipe gives them lists.",
            "- Quality heuristics favour standard, well-punctuated prose: dialects, informal registers, lists and "
            "code-heavy pages are more likely to be removed (the low-quality shares above), so they are "
            "under-represented.",
            "- PII redaction matches patterns (e-mail addresses, phone numbers, IP addresses, card numbers, keys): "
            "names, street addresses and other identifiers are not removed.",
            "- The model reflects its sources: their topics, languages, time span and viewpoints (see Data and "
            "Knowledge cutoff), and nothing beyond them."]
    if missing:
        out += [f"- These rule modules were not installed, so their rules were not applied: {', '.join(missing)}."]
    return [*out, ""]


def _evaluation(metrics: dict[str, Any] | None, tasks: dict[str, Any] | None, objective: str) -> list[str]:
    out = ["## Evaluation", ""]
    if not metrics and not tasks:
        return [*out, "Not evaluated yet: the evaluate step rewrites this card with its results.", ""]
    if metrics:
        masked = objective == "masked_lm"
        header = ["held-out split", "tokens", "loss", "perplexity", "masked accuracy" if masked else "bits per byte"]
        rows = []
        every = [("all sources", metrics.get("overall") or {}), *sorted((metrics.get("by_source") or {}).items())]
        for name, r in every:
            last = r.get("masked_accuracy") if masked else r.get("bits_per_byte")
            rows.append([name, _n(r.get("tokens")), _n(r.get("loss")), _n(r.get("perplexity")), _n(last)])
        out += ["Held-out loss (nats per token) on the validation split; bits per byte divide by each source's "
                "UTF-8 bytes, so models with different tokenizers compare.", "", *_table(header, rows), ""]
    if tasks:
        rows = []
        for name, r in sorted(tasks.items()):
            d = r.get("decontamination") or {}
            rows.append([name, _n(r.get("items")), _n(r.get("accuracy")), _n(r.get("chance")),
                         f"{_n(d.get('removed'))} of {_n(d.get('checked'))} removed ({d.get('ngram', '-')}-grams)"
                         if d else "-"])
        out += ["Multiple-choice tasks built from validation documents only, checked for n-gram overlap with the "
                "train split.", "", *_table(["task", "items", "accuracy", "chance", "decontamination"], rows), ""]
    return out
