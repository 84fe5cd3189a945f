"""Export the latest committed checkpoint as a normal Hugging Face model folder.

safetensors weights, config.json, generation_config.json, the tokenizer files and a model card;
``transformers.AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer`` load it as is. Files are
uploaded first and the manifest last, so a half-exported folder is never taken as complete.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from pretrain import storage
from pretrain.config import Recipe, fingerprint
from pretrain.manifest import Manifest, Shard, reuse
from pretrain.model.build import build_model
from pretrain.train.checkpoint import load_model_weights

CARD = """---
library_name: transformers
pipeline_tag: text-generation
tags: [pretrain, base-model]
---
# {name}

A base (pre-trained, not instruction-tuned) causal language model trained by the `pretrain`
platform from recipe `{name}`.

- architecture: {arch}, {params:,} parameters, context {seq_len} tokens, vocabulary {vocab}
- training: {steps} steps, {tokens:,} tokens seen
- final validation loss: {val_loss}

The resolved recipe is in `recipe.json`.
"""


def export_model(recipe: Recipe, checkpoints: Manifest, tokens: Manifest) -> Manifest:
    root = recipe.url("model")
    fp = fingerprint(checkpoints.fingerprint, checkpoints.extra["latest"])
    if (done := reuse(root, fp)) is not None:
        return done
    vocab, eos = int(tokens.extra["vocab_size"]), int(tokens.extra["eos_id"])
    model = build_model(recipe.model, vocab, eos, pad_id=None, seed=recipe.seed)
    load_model_weights(checkpoints.extra["latest"], model)
    stats = checkpoints.stats
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok_dir = storage.local_copy(tokens.extra["tokenizer"])
        for f in Path(tok_dir).iterdir():
            if f.is_file() and not f.name.startswith("."):
                (Path(tmp) / f.name).write_bytes(f.read_bytes())
        (Path(tmp) / "recipe.json").write_text(json.dumps(recipe.model_dump(mode="json"), indent=2))
        (Path(tmp) / "README.md").write_text(CARD.format(
            name=recipe.name, arch=recipe.model.architecture, params=sum(p.numel() for p in model.parameters()),
            seq_len=recipe.model.seq_len, vocab=vocab, steps=stats.get("steps"),
            tokens=int(stats.get("steps") or 0) * recipe.train.micro_batch_size * recipe.train.grad_accum_steps
            * recipe.model.seq_len * int(stats.get("world_size") or 1),
            val_loss=stats.get("final_val_loss")))
        files = sorted(p for p in Path(tmp).iterdir() if p.is_file())
        storage.upload_dir(tmp, root)
        shards = [Shard(url=storage.join(root, p.name), rows=0, bytes=p.stat().st_size) for p in files]
    result = Manifest(kind="model", root=root, fingerprint=fp, shards=shards,
                      stats={"parameters": sum(p.numel() for p in model.parameters()), "files": len(shards)},
                      config=recipe.model.model_dump(), extra={"checkpoint": checkpoints.extra["latest"]})
    result.save()
    return result
