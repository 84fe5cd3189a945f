"""The model card of an image run (CLIP or ViT): what images the model saw, how they were filtered and
deduplicated, the contrastive objective, and retrieval / linear-probe results against an untrained model and chance.

``pretrain.model.card.render_card`` sends image objectives here; the shared parts (lineage, hardware, tables,
number formats) live there.
"""

from __future__ import annotations

from typing import Any

from pretrain.config import Recipe
from pretrain.model.card import (
    NOT_RECORDED,
    _hardware_lineage,
    _n,
    _table,
    _time_rows,
    front_matter,
    lineage,
    training_seconds,
)

IMAGE_PIPELINES = {
    "image_text_contrastive": ("zero-shot-image-classification",
                               "image-text contrastive model (a CLIP-style image encoder and caption encoder)",
                               "CLIPModel"),
    "image_contrastive": ("image-feature-extraction",
                          "image encoder (ViT) pre-trained with image-image contrastive learning (SimCLR-style)",
                          "ViTModel"),
}
DEFAULT_AUGMENT = {"image_contrastive": "random resized crop (area 0.2-1), horizontal flip, colour jitter 0.4 at "
                                        "p 0.8, greyscale at p 0.2, Gaussian blur at p 0.5 (none under 64 px)",
                   "image_text_contrastive": "random resized crop (area 0.8-1) only: captions may name colours and "
                                             "sides that a flip or a jitter would make false"}
DIRECTIONS = (("i2t", "image -> text"), ("t2i", "text -> image"))


def image_model_index(name: str, images: dict[str, Any] | None) -> list[dict[str, Any]]:
    """``model-index`` of an image run: retrieval recall@1/5 each way and the linear probe's accuracy, each named
    with its chance level and the untrained model's figure. Missing values are left out."""
    images = images or {}
    dataset = {"type": "held-out", "name": f"{name} validation split", "split": "validation"}
    results = []
    r = images.get("retrieval") or {}
    for key, label in DIRECTIONS if r.get("trained") else ():
        found = []
        for k in (1, 5):
            value = r["trained"].get(f"{key}_recall_at_{k}")
            if value is None:
                continue
            chance = (r.get("chance") or {}).get(f"recall_at_{k}")
            untrained = (r.get("untrained") or {}).get(f"{key}_recall_at_{k}")
            found.append({"type": f"recall@{k}", "value": round(float(value), 6),
                          "name": f"recall@{k} (pool {r.get('pool')}; chance {_n(chance, 3)}, untrained "
                                  f"{_n(untrained, 3)})"})
        if found:
            results.append({"task": {"type": "zero-shot-image-retrieval", "name": f"zero-shot retrieval, {label}"},
                            "dataset": dict(dataset), "metrics": found})
    p = images.get("probe") or {}
    if (p.get("trained") or {}).get("accuracy") is not None:
        untrained = (p.get("untrained") or {}).get("accuracy")
        metrics = [{"type": "accuracy", "value": round(float(p["trained"]["accuracy"]), 6),
                    "name": f"linear probe accuracy (chance {_n(p.get('chance'), 3)}, untrained {_n(untrained, 3)})"}]
        if p["trained"].get("knn_accuracy") is not None:
            metrics.append({"type": "knn_accuracy", "value": round(float(p["trained"]["knn_accuracy"]), 6),
                            "name": "20-NN accuracy"})
        results.append({"task": {"type": "image-classification", "name": "linear probe on frozen features"},
                        "dataset": dict(dataset), "metrics": metrics})
    return [{"name": name, "results": results}] if results else []


def render_image_card(recipe: Recipe, config, *, parameters: int, train: dict[str, Any] | None = None,
                      history: list[dict[str, Any]] | None = None, data: dict[str, Any] | None = None,
                      images: dict[str, Any] | None = None, lineage_info: dict[str, Any] | None = None) -> str:
    """README.md of an image run's model (``render_card`` sends image objectives here): what data it saw (sources,
    samples, licences, the image and caption rules, duplicates removed, image size), the objective, retrieval and
    probe results against an untrained model and chance, and the limitations."""
    train = train or {}
    objective = recipe.train.objective
    pipeline, kind, auto = IMAGE_PIPELINES[objective]
    info = lineage_info if lineage_info is not None else lineage(recipe)
    clip = objective == "image_text_contrastive"
    front = front_matter(pipeline, ["pretrain", "base-model", objective.replace("_", "-"), "clip" if clip else "vit",
                                    "contrastive-learning"], data, image_model_index(recipe.name, images))
    loads = f"`{auto}.from_pretrained`" + (", its captions with `AutoTokenizer.from_pretrained`" if clip else "")
    body = [f"# {recipe.name}", "",
            f"A base (pre-trained, not fine-tuned) {kind} trained by the `pretrain` platform from recipe "
            f"`{recipe.name}`. Load it with {loads}; images are resized so the shorter side is "
            f"{recipe.model.image_size} pixels, centre-cropped, and normalized with mean = std = 0.5.", ""]
    body += _image_model(recipe, config, parameters, clip)
    world = int(train.get("world_size") or recipe.train.nnodes * recipe.train.nproc_per_node)
    body += _image_training(recipe, train, history, world)
    body += _hardware_lineage(recipe, train, world, info)
    body += _image_data(recipe, data)
    body += _image_evaluation(images)
    body += _image_limitations(recipe, clip)
    size = recipe.model.image_size
    folder = '"path/to/this/folder"'
    use = ["```python", "import torch", "from PIL import Image",
           f"from transformers import AutoImageProcessor, {auto}" + (", AutoTokenizer" if clip else ""), "",
           f"model = {auto}.from_pretrained({folder}).eval()",
           f"processor = AutoImageProcessor.from_pretrained({folder})  # shorter side to {size}, centre crop, "
           "mean = std = 0.5", 'pixels = processor(images=[Image.open("photo.png")], return_tensors="pt")']
    if clip:
        use += [f"tokenizer = AutoTokenizer.from_pretrained({folder})",
                'texts = tokenizer(["a red circle", "a blue square"], padding=True, truncation=True, '
                'return_tensors="pt")', "with torch.no_grad():", "    out = model(**pixels, **texts)",
                "print(out.logits_per_image.softmax(dim=-1))  # which caption fits the image", "```", "",
                "The text tower reads a caption's embedding at its end-of-text token: the run's trained tokenizer "
                "appends it (a tokenizer given by `tokenizer.path` may not: then append `tokenizer.eos_token_id`). "
                "`model.get_image_features` / `get_text_features` give the embeddings (with `transformers` 5, in "
                "their output's `pooler_output`); L2-normalize them and compare by dot product."]
    else:
        use += ["with torch.no_grad():",
                "    features = model(**pixels).last_hidden_state[:, 0]  # the CLS token: the image's features",
                "```"]
    return f"---\n{front}---\n\n" + "\n".join([*body, "", "## Use", "", *use, ""])


def _image_model(recipe: Recipe, config, parameters: int, clip: bool) -> list[str]:
    vision = getattr(config, "vision_config", None) or config
    get = lambda c, key: getattr(c, key, None)  # noqa: E731
    rows = [["architecture", f"{get(config, 'model_type')} ({', '.join(get(config, 'architectures') or []) or '-'})"],
            ["parameters", _n(int(parameters))],
            ["image size (pixels)", _n(get(vision, "image_size"))], ["patch size", _n(get(vision, "patch_size"))],
            ["image encoder", f"depth {_n(get(vision, 'num_hidden_layers'))}, width {_n(get(vision, 'hidden_size'))}"
                              f", {_n(get(vision, 'num_attention_heads'))} heads, MLP "
                              f"{_n(get(vision, 'intermediate_size'))}"]]
    out = []
    if clip:
        text = config.text_config
        rows += [["caption encoder", f"depth {_n(text.num_hidden_layers)}, width {_n(text.hidden_size)}, "
                                     f"{_n(text.num_attention_heads)} heads, MLP {_n(text.intermediate_size)}"],
                 ["caption length (tokens)", _n(text.max_position_embeddings)],
                 ["vocabulary", _n(text.vocab_size)], ["embedding (projection) size", _n(config.projection_dim)]]
        out = ["## Tokenizer", "", f"{_tokenizer_origin(recipe, text.vocab_size)}; saved in this folder. Captions "
               "are encoded, cut to the caption length less one, and end with `<|endoftext|>`.", ""]
    else:
        rows.append(["features", "the CLS token of the last hidden state (the SimCLR projection head, "
                                 f"{recipe.model.projection_dim} wide, served training only: not in this folder)"])
    return ["## Model", "", *_table(["", ""], rows), "", *out]


def _tokenizer_origin(recipe: Recipe, vocab: Any) -> str:
    tok = recipe.tokenizer
    if recipe.model.init_from or tok.path:
        return f"Loaded from `{recipe.model.init_from or tok.path}`; vocabulary {_n(vocab)}"
    return (f"{'Byte-level BPE' if tok.kind == 'bpe' else 'Unigram'} trained on the run's captions; vocabulary "
            f"{_n(vocab)} with `<|endoftext|>`, `<|pad|>` and `<|mask|>`")


def _image_training(recipe: Recipe, train: dict[str, Any], history: list[dict[str, Any]] | None,
                    world: int) -> list[str]:
    t = recipe.train
    batch = t.micro_batch_size * t.grad_accum_steps * world
    if t.objective == "image_text_contrastive":
        objective = ("image_text_contrastive: symmetric InfoNCE over image-caption pairs (each image against every "
                     "caption of the batch and back), learnable temperature")
    else:
        objective = (f"image_contrastive: NT-Xent (InfoNCE) over two augmented views of each image, temperature "
                     f"{t.temperature:g}")
    a = t.augment
    given = [f"{k} {v}" for k, v in a.model_dump().items() if v is not None]
    augment = DEFAULT_AUGMENT[t.objective] + (f"; set in the recipe: {', '.join(given)}" if given else "")
    steps = train.get("steps")
    rows = [["objective", objective],
            ["negatives", f"the whole global batch ({_n(batch)} samples, gathered across ranks)" if t.gather_negatives
             else f"each rank's own batch ({_n(t.micro_batch_size * t.grad_accum_steps)} samples)"],
            ["augmentations (train only, seeded by step)", augment],
            ["steps", _n(steps)], ["samples trained (steps x global batch)",
                                   _n(int(steps) * batch) if steps is not None else "-"],
            ["global batch (samples)", _n(batch)], ["optimizer", t.optimizer],
            ["schedule", f"{t.schedule}, peak LR {t.lr:g}, {t.warmup_steps} warmup steps"],
            ["precision", t.precision], ["parallelism", f"{t.parallel}, {world} ranks"],
            ["initial / final validation loss", f"{_n(train.get('initial_val_loss'))} / "
                                                f"{_n(train.get('final_val_loss'))}"]]
    seconds, how = training_seconds(train, history)
    compute = [["training FLOPs", NOT_RECORDED], *_time_rows(train, seconds, how, world)]
    return ["## Training", "", *_table(["", ""], rows), "", "## Compute", "", *_table(["", ""], compute), ""]


def _image_data(recipe: Recipe, data: dict[str, Any] | None) -> list[str]:
    out = ["## Data", ""]
    if not data or not data.get("sources"):
        return [*out, "Not recorded: the data steps' manifests were not available when this card was written.", ""]
    rows = []
    for source, r in data["sources"].items():
        lic = ", ".join(f"{k or '(none)'} ({_n(v)})" for k, v in sorted((r.get("licenses") or {}).items())) or "-"
        rows.append([source, _n(r.get("samples", r.get("documents"))), _n(r.get("train_samples")),
                     _n(r.get("val_samples")), lic])
    out += _table(["source", "samples", "train samples", "validation samples", "licences (samples)"], rows)
    im, facts = recipe.images, data.get("samples") or {}
    out += ["", f"Each image was decoded with Pillow (EXIF orientation applied, converted to RGB), resized so its "
                f"shorter side is at most {im.size} pixels (never enlarged) and stored as {im.encoding.upper()}; "
                f"images over {_n(im.max_pixels)} pixels or {_n(im.max_bytes)} bytes, and files that do not decode, "
                "were skipped and counted."]
    if facts.get("no_caption"):
        out += ["", f"{_n(facts['no_caption'])} samples without a caption were left out of image-text training."]
    f = recipe.filter
    rules = []
    if f.images.enabled:
        rules.append(f"images: shorter side at least {f.images.min_size} pixels, long side at most "
                     f"{f.images.max_aspect:g} x the short side (judged on the original size)")
    cap = f.profiles.caption
    rules.append(f"captions: {cap.min_words}-{cap.max_words} words when present, plus the gibberish, toxicity and "
                 "PII rules of the caption profile")
    out += ["", "### Filters", "", *[f"- {r}" for r in rules]]
    drops = data.get("drops") or {}
    out += ["", *_table(["rule", "samples removed", "by source"],
                        [[f"`{rule}`", _n(r["documents"]),
                          ", ".join(f"{s} {_n(n)}" for s, n in sorted(r.get("by_source", {}).items()))]
                         for rule, r in drops.items()])] if drops else ["", "No sample was removed by a filter rule."]
    d = recipe.dedup
    kinds = (["exact (the same decoded pixels, whatever the file format)"] if d.exact else []) + \
        ([f"near-duplicate (64-bit perceptual hashes at most {d.image_distance} bits apart)"] if d.fuzzy else [])
    out += ["", "### Deduplication", "", f"Across all sources: {' and '.join(kinds) or 'none'}.", ""]
    rows = [[s, _n(r["documents_in"]), _n(r["exact"]), _n(r["fuzzy"]), _n(r["documents_out"])]
            for s, r in sorted(((data.get("dedup") or {}).get("by_source") or {}).items())]
    out += _table(["source", "samples in", "exact copies removed", "near copies removed", "samples out"], rows) \
        if rows else ["Not recorded."]
    return [*out, ""]


def _image_evaluation(images: dict[str, Any] | None) -> list[str]:
    out = ["## Evaluation", ""]
    r, p = (images or {}).get("retrieval") or {}, (images or {}).get("probe") or {}
    if not r.get("trained") and not p.get("trained") and not p.get("skipped"):
        return [*out, "Not evaluated yet: the evaluate step rewrites this card with its results.", ""]
    if r.get("trained"):
        rows = []
        for key, label in DIRECTIONS:
            for k in (1, 5):
                rows.append([label, f"recall@{k}", _n(r["trained"].get(f"{key}_recall_at_{k}"), 3),
                             _n((r.get("untrained") or {}).get(f"{key}_recall_at_{k}"), 3),
                             _n((r.get("chance") or {}).get(f"recall_at_{k}"), 3)])
        out += [f"Zero-shot retrieval on the validation split: {_n(r.get('pools'))} pool(s) of {_n(r.get('pool'))} "
                "samples with distinct captions; each image ranks its pool's captions and each caption its pool's "
                "images (a tie counts as a miss). The untrained model has this model's shape and a fresh "
                "initialization.", "", *_table(["direction", "metric", "trained", "untrained", "chance"], rows), ""]
    if p.get("trained"):
        u = p.get("untrained") or {}
        rows = [["linear probe", _n(p["trained"].get("accuracy"), 3), _n(u.get("accuracy"), 3),
                 _n(p.get("chance"), 3)],
                ["20-NN", _n(p["trained"].get("knn_accuracy"), 3), _n(u.get("knn_accuracy"), 3),
                 _n(p.get("chance"), 3)]]
        out += [f"Linear probe: a logistic regression on frozen, standardized features of {_n(p.get('train_samples'))}"
                f" labelled train samples, accuracy on {_n(p.get('val_samples'))} validation samples "
                f"({_n(p.get('classes'))} classes; chance is the largest class's share).", "",
                *_table(["", "trained", "untrained", "chance"], rows), ""]
    elif p.get("skipped"):
        out += [f"Linear probe skipped: {p['skipped']}.", ""]
    return out


def _image_limitations(recipe: Recipe, clip: bool) -> list[str]:
    return ["## Limitations", "",
            "- A base encoder: it embeds images" + (" and captions" if clip else "") + "; it is not a classifier, "
            "detector or caption generator, and its features need a head or a fine-tune for a task.",
            f"- It saw images of at most {recipe.model.image_size} pixels a side: fine detail, text in images, "
            "charts and diagrams are beyond it.",
            "- The evaluation's held-out images come from the same sources as the training images: retrieval and "
            "probe figures measure in-distribution skill, not transfer to other images.",
            "- It reflects its sources: their subjects, styles, places and people" +
            (", and the vocabulary and biases of their captions" if clip else "") + ", and nothing beyond them. "
            "Caption rules filter words and patterns; nothing inspects what an image shows.",
            ""]
