"""Export the latest committed checkpoint as a normal Hugging Face model folder.

safetensors weights, config.json (generation_config.json for causal LMs), the tokenizer files and a model
card; ``AutoModelForCausalLM`` (causal LM) or ``AutoModelForMaskedLM`` (masked LM) and ``AutoTokenizer``
load it as is. Image objectives export the vision model alone (``AutoModel``: ``ViTModel`` for
image_contrastive, without SimCLR's projection head; ``CLIPModel`` for image_text_contrastive, with the run's
tokenizer) plus a ``preprocessor_config.json`` (``AutoImageProcessor``). The skeleton the checkpoint's weights
load into is the recipe's model, or for continued pre-training the ``model.init_from`` folder's architecture.
Files are uploaded first and the manifest last, so a half-exported folder is never taken as complete.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from pretrain import storage
from pretrain.config import Recipe, fingerprint
from pretrain.manifest import Manifest, Shard, reuse
from pretrain.model.build import auto_class, build_model, pretrained_config
from pretrain.model.card import PIPELINES, render_card
from pretrain.model.card_images import IMAGE_PIPELINES
from pretrain.model.vision import build_vision_model, image_processor
from pretrain.train.checkpoint import load_model_weights


def card_data(recipe: Recipe, checkpoints: Manifest) -> dict | None:
    """The data facts for the card (None when the data steps' manifests are not under the run root)."""
    from pretrain.data.facts import collect

    try:
        data = collect(recipe)
    except FileNotFoundError:
        return None
    data["trained_tokens_by_source"] = checkpoints.extra.get("trained_tokens_by_source") or None
    return data


def skeleton(recipe: Recipe, tokens: Manifest):
    """The model the checkpoint's weights load into, in fp32 on the CPU: the HF model, or for image objectives
    the ``ContrastiveModule`` (its ``.model`` is what is exported)."""
    import torch

    objective = recipe.train.objective
    if recipe.modality != "text":
        from pretrain.train.objectives.contrastive import ContrastiveModule

        extra = tokens.extra
        hf = build_vision_model(recipe.model, recipe.seed, vocab_size=int(extra.get("vocab_size") or 0),
                                eos_id=int(extra.get("eos_id") or 0), pad_id=extra.get("pad_id"))
        return ContrastiveModule.from_recipe(hf, recipe)
    if recipe.model.init_from:
        config, _ = pretrained_config(recipe.model.init_from, objective)
        return auto_class(objective).from_config(config, dtype=torch.float32)
    extra = tokens.extra
    return build_model(recipe.model, int(extra["vocab_size"]), int(extra["eos_id"]), extra.get("pad_id"),
                       recipe.seed, mask_id=extra.get("mask_id"))


def copy_tokenizer(source: str, dest: Path, objective: str, mask_id: int | None) -> None:
    """The tokenizer folder's files (never a model's files there: what ``save_pretrained`` wrote wins); a masked
    LM's tokenizer config must name its mask token (fill-mask)."""
    for f in Path(storage.local_copy(source)).iterdir():
        model_file = f.suffix in (".safetensors", ".bin", ".pt") or f.name.endswith(".index.json")
        if f.is_file() and not f.name.startswith(".") and not model_file and not (dest / f.name).exists():
            (dest / f.name).write_bytes(f.read_bytes())
    config = dest / "tokenizer_config.json"
    if objective != "masked_lm" or mask_id is None or not config.exists():
        return
    settings = json.loads(config.read_text())
    if not settings.get("mask_token"):
        from tokenizers import Tokenizer

        settings["mask_token"] = Tokenizer.from_file(str(dest / "tokenizer.json")).id_to_token(int(mask_id))
        config.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")


def export_model(recipe: Recipe, checkpoints: Manifest, tokens: Manifest) -> Manifest:
    root = recipe.url("model")
    fp = fingerprint(checkpoints.fingerprint, checkpoints.extra["latest"])
    if (done := reuse(root, fp)) is not None:
        return done
    objective = recipe.train.objective
    trained = skeleton(recipe, tokens)
    load_model_weights(checkpoints.extra["latest"], trained)
    image = recipe.modality != "text"
    model = trained.exported() if image else trained
    if objective == "causal_lm":
        model.config.use_cache = True  # off while training; generation wants it
    stats = checkpoints.stats
    params = sum(p.numel() for p in model.parameters())
    pipeline = (IMAGE_PIPELINES if image else PIPELINES)[objective][0]
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokens.extra.get("tokenizer"):  # every text run; image-text runs (an image-only run has none)
            copy_tokenizer(tokens.extra["tokenizer"], Path(tmp), objective, tokens.extra.get("mask_id"))
        if image:
            image_processor(recipe.model).save_pretrained(tmp)
        (Path(tmp) / "recipe.json").write_text(json.dumps(recipe.model_dump(mode="json"), indent=2))
        (Path(tmp) / "README.md").write_text(render_card(
            recipe, model.config, parameters=params, train=stats, history=checkpoints.extra.get("history"),
            data=card_data(recipe, checkpoints)))
        files = sorted(p for p in Path(tmp).iterdir() if p.is_file())
        storage.upload_dir(tmp, root)
        shards = [Shard(url=storage.join(root, p.name), rows=0, bytes=p.stat().st_size) for p in files]
    result = Manifest(kind="model", root=root, fingerprint=fp, shards=shards,
                      stats={"parameters": params, "files": len(shards)},
                      config=recipe.model.model_dump(),
                      extra={"checkpoint": checkpoints.extra["latest"], "objective": objective,
                             "pipeline_tag": pipeline})
    result.save()
    return result
