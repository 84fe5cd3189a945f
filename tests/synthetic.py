"""A learnable synthetic token corpus and a recipe around it, for training tests on CPU and GPU."""

from __future__ import annotations

import numpy as np
import yaml

from pretrain import storage
from pretrain.config import load_recipe
from pretrain.manifest import Manifest, Shard
from pretrain.tokens import TokenShardWriter


def write_synthetic_run(root: str, overrides: list[str], vocab: int = 256, docs: int = 64, doc_len: int = 600,
                        mask_id: int | None = None):
    """Token shards whose next token follows from the current one (mostly), plus a tokens manifest.

    With ``mask_id`` (a masked LM's [MASK]), that id is reserved: it never occurs in the data."""
    rng = np.random.default_rng(0)
    shards = []
    for split, count in (("train", docs), ("val", max(4, docs // 8))):
        w = TokenShardWriter(storage.join(root, "tokens", split, "part-00000"), vocab, eos_id=0, tokenizer_hash="syn")
        for _ in range(count):
            seq = np.empty(doc_len, dtype=np.int64)
            seq[0] = rng.integers(1, vocab)
            for i in range(1, doc_len):
                seq[i] = (seq[i - 1] * 5 + 3) % (vocab - 1) + 1 if rng.random() > 0.1 else rng.integers(1, vocab)
            if mask_id is not None:
                seq[seq == mask_id] = 1
            w.add([*seq.tolist(), 0], text_bytes=doc_len * 4)
        h = w.close()
        shards.append(Shard(url=w.url, rows=h["tokens"], bytes=h["bytes"], meta={"split": split}))
    Manifest(kind="tokens", root=storage.join(root, "tokens"), fingerprint="synthetic", shards=shards,
             extra={"vocab_size": vocab, "eos_id": 0, "tokenizer": "", "mask_id": mask_id}).save()
    recipe = load_recipe("tiny", [f"run_root={root}", *overrides])
    url = storage.join(root, "recipe.yaml")
    storage.write_text(url, yaml.safe_dump(recipe.model_dump(mode="json")))
    return recipe, url
