"""A tiny image-text set for the training tests: coloured shapes rendered with PIL, captions that name them.

4 colours x 4 shapes ("red circle", ...), each at a random position and size on a noisy light background, laid
out as the samples manifest of an image run (contract section 2: Parquet split shards, ``kind="samples"``),
with a BPE tokenizer trained on the captions and saved as the run's tokenizer. No network, no files but these.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from PIL import Image, ImageDraw

from pretrain import storage
from pretrain.config import TokenizerConfig, load_recipe
from pretrain.manifest import Manifest, Shard

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 50), "blue": (30, 60, 220), "yellow": (235, 200, 20)}
SHAPES = ("circle", "square", "triangle", "cross")
SCHEMA = pa.schema([("id", pa.string()), ("source", pa.string()), ("image", pa.binary()), ("text", pa.string()),
                    ("caption", pa.list_(pa.int32())), ("label", pa.int32())])


def render(shape: str, colour: str, rng: np.random.Generator, size: int = 32) -> bytes:
    """PNG bytes of one shape on a noisy light-grey background."""
    base = rng.integers(170, 235)
    pixels = np.clip(base + rng.normal(0, 8, (size, size, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(img)
    r = rng.uniform(0.22, 0.34) * size
    cx, cy = rng.uniform(r, size - r, 2)
    fill = tuple(int(np.clip(c + rng.integers(-20, 21), 0, 255)) for c in COLOURS[colour])
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    else:
        w = r / 3
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def samples(n: int, seed: int) -> list[tuple[str, str, bytes]]:
    """(caption, shape, image bytes) of n samples, cycling through the 16 (colour, shape) pairs."""
    rng = np.random.default_rng(seed)
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    out = []
    for i in range(n):
        colour, shape = pairs[(i + seed) % len(pairs)]
        out.append((f"{colour} {shape}", shape, render(shape, colour, rng)))
    return out


def write_shard(url: str, rows: list[dict], row_group: int) -> Shard:
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    with storage.atomic_path(url) as path:
        pq.write_table(table, path, compression="zstd", row_group_size=row_group)
    return Shard(url=url, rows=len(rows), bytes=0)


def write_image_run(root: str, overrides: list[str], *, objective: str = "image_text_contrastive",
                    train: int = 512, val: int = 128, seq_len: int = 8, row_group: int = 64):
    """The samples manifest at ``<root>/tokens`` and a resolved recipe at ``<root>/recipe.yaml``."""
    from pretrain.data.tokenizer import load_tokenizer, save_tokenizer, special_ids, tokenizer_hash, train_tokenizer

    image_text = objective == "image_text_contrastive"
    data = {"train": samples(train, 0), "val": samples(val, 1)}
    extra = {"modality": "image_text" if image_text else "image", "tokenizer": "", "vocab_size": 0, "eos_id": None,
             "pad_id": None, "tokenizer_hash": "", "labels": sorted(SHAPES), "image_size": 32}
    tok = None
    if image_text:
        url = storage.join(root, "tokenizer")
        captions = sorted({c for c, _, _ in data["train"]})
        save_tokenizer(train_tokenizer([captions * 8], TokenizerConfig(vocab_size=300)), url, seq_len)
        tok = load_tokenizer(url)
        ids = special_ids(tok, url)
        extra.update(tokenizer=url, vocab_size=tok.get_vocab_size(), eos_id=ids["eos"], pad_id=ids["pad"],
                     tokenizer_hash=tokenizer_hash(url))
    shards = []
    for split, items in data.items():
        rows = []
        for i, (caption, shape, image) in enumerate(items):
            ids = [*tok.encode(caption).ids[:seq_len - 1], extra["eos_id"]] if tok else []
            rows.append({"id": f"{split}-{i}", "source": "shapes", "image": image, "text": caption, "caption": ids,
                         "label": extra["labels"].index(shape)})
        shard = write_shard(storage.join(root, "tokens", split, "part-00000.parquet"), rows, row_group)
        shard.meta = {"split": split, "source": "shapes"}
        shards.append(shard)
    Manifest(kind="samples", root=storage.join(root, "tokens"), fingerprint=f"images-{objective}", shards=shards,
             stats={"train_samples": train, "val_samples": val}, extra=extra).save()
    tree = {"name": "images", "seed": 0, "run_root": root,
            "sources": [{"name": "shapes", "format": "images", "uri": "builtin:shapes"}],
            "model": {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "intermediate_size": 128,
                      "seq_len": seq_len, "image_size": 32, "patch_size": 8, "projection_dim": 32},
            "train": {"objective": objective, "micro_batch_size": 32, "warmup_steps": 5, "log_interval": 1,
                      "eval_batches": 2, "verify_tokens": False, "threads_per_process": 1},
            "evaluate": {"batch_size": 64}, "observe": {"metrics_port": None, "progress": "off"}}
    source = storage.join(root, "base.yaml")
    storage.write_text(source, yaml.safe_dump(tree))
    recipe = load_recipe(source, overrides)
    url = storage.join(root, "recipe.yaml")
    storage.write_text(url, yaml.safe_dump(recipe.model_dump(mode="json")))
    return recipe, url
