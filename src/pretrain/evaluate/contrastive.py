"""Evaluation of an image run's model: zero-shot retrieval and a linear probe on frozen features.

The measures themselves live in ``retrieval.py`` and ``probe.py``; this module reads the samples, prepares the
images, embeds them with each model and assembles the results. Both are measured for the exported model, for an
untrained model of the same shape (the folder's config, a fresh init drawn from the seed) and against chance, so
a number says how much training bought.

- Retrieval (image_text runs, CLIP): the validation split's samples with distinct captions (case and spacing
  ignored) in a seeded order, cut into disjoint pools of ``pool`` samples. In each pool every image ranks the
  pool's captions (image->text) and every caption the pool's images (text->image) by cosine similarity;
  recall@k is the share whose own partner is in the top k, averaged over the pools; chance is k / pool.
  A tie counts against the query: a hit needs fewer than k other candidates scoring at least as high, so a
  model that scores everything alike gets 0, never a lucky tie-break.
- Linear probe (both): frozen features of labelled samples (clip: ``get_image_features``; vit: the CLS token
  of ``last_hidden_state``) of up to ``PROBE_TRAIN`` train-split samples, standardized, fit a multinomial
  logistic regression (L-BFGS, the L2 penalty picked on a fifth of them); its accuracy on the validation split
  against the majority class's share there. A weighted k-NN on the same features is reported beside it.

Images are prepared as the model saw them: the stored bytes decoded with Pillow, the shorter side resized to
the stored size and centre-cropped (the training loader's ``decode_square``), then resized to the model's image
size (antialiased) and normalized with mean = std = 0.5, exactly as training's held-out views.
"""

from __future__ import annotations

import base64
import bisect
import contextlib
import dataclasses
import io
import itertools
import math
import random
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import pyarrow.parquet as pq
import torch

from pretrain import storage
from pretrain.config import RecipeError
from pretrain.data.documents import iter_batches
from pretrain.evaluate.probe import knn_accuracy, linear_probe, majority_share
from pretrain.evaluate.retrieval import caption_key, retrieval, retrieval_pools
from pretrain.manifest import Manifest, Shard

PROBE_TRAIN = 5000  # train-split samples the probe fits on, at most
PROBE_VAL = 5000  # validation samples the probe is scored on, at most
EXAMPLES = 8  # validation images shown in the report
BATCH = 128


# -- reading the samples manifest ------------------------------------------------------------------------------
def split_shards(samples: Manifest, split: str) -> list[Shard]:
    return [s for s in samples.shards if s.meta.get("split") == split]


def read_columns(shards: Sequence[Shard], columns: list[str]) -> dict[str, list]:
    """Every row of ``columns`` of the shards, in shard order."""
    out: dict[str, list] = {c: [] for c in columns}
    for shard in shards:
        for batch in iter_batches(shard.url, columns=columns):
            for c in columns:
                out[c] += batch.column(c).to_pylist()
    return out


@dataclasses.dataclass(frozen=True)
class RowGroup:
    shard: Shard
    index: int  # the row group within its shard
    first: int  # its first row's position, numbered as ``read_columns`` reads the shards
    rows: int


def row_groups(shards: Sequence[Shard]) -> list[RowGroup]:
    """Every row group of the shards (their Parquet footers only)."""
    out, offset = [], 0
    for shard in shards:
        fs, path = storage.filesystem(shard.url)
        with fs.open(path, "rb") as f:
            meta = pq.ParquetFile(f).metadata
        for g in range(meta.num_row_groups):
            out.append(RowGroup(shard, g, offset, meta.row_group(g).num_rows))
            offset += meta.row_group(g).num_rows
    return out


def read_groups(groups: Sequence[RowGroup], columns: list[str]) -> Iterator[tuple[RowGroup, dict[str, list]]]:
    """The columns of each row group, reading nothing else (each shard opened once per run of its groups)."""
    for url, run in itertools.groupby(groups, key=lambda g: g.shard.url):
        fs, path = storage.filesystem(url)
        with fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            for g in run:
                yield g, pf.read_row_group(g.index, columns=columns).to_pydict()


def take_rows(shards: Sequence[Shard], columns: list[str], positions: Sequence[int]) -> dict[str, list]:
    """The rows at ``positions`` (in the order ``read_columns`` numbers them), in the order given; only the row
    groups that hold one are read."""
    wanted = sorted(set(positions))
    groups = [g for g in row_groups(shards)
              if bisect.bisect_left(wanted, g.first) < bisect.bisect_left(wanted, g.first + g.rows)]
    found: dict[int, dict[str, Any]] = {}
    for g, table in read_groups(groups, columns):
        for p in wanted[bisect.bisect_left(wanted, g.first):bisect.bisect_left(wanted, g.first + g.rows)]:
            found[p] = {c: table[c][p - g.first] for c in columns}
    return {c: [found[p][c] for p in positions] for c in columns}


def labelled_groups(shards: Sequence[Shard], limit: int, seed: int) -> tuple[list[int], list[int]]:
    """Up to ``limit`` labelled rows (positions, labels) from whole row groups in a seeded order: a few groups
    are read, however large the split."""
    groups = row_groups(shards)
    random.Random(seed).shuffle(groups)
    picked: list[tuple[int, int]] = []
    with contextlib.closing(read_groups(groups, ["label"])) as tables:
        for g, table in tables:
            picked += [(g.first + i, label) for i, label in enumerate(table["label"])
                       if label is not None and label >= 0]
            if len(picked) >= limit:
                break
    picked = sorted(picked[:limit])
    return [p for p, _ in picked], [label for _, label in picked]


# -- images as the model sees them -----------------------------------------------------------------------------
def load_images(images: Sequence[bytes], size: int) -> torch.Tensor:
    """uint8 [B, size, size, 3]: decoded, shorter side resized to ``size``, centre-cropped (the training loader's
    ``decode_square``; ``size`` is the stored size, as the loader uses it)."""
    import numpy as np

    from pretrain.tokens.images import decode_square

    out = []
    for i, data in enumerate(images):
        try:
            out.append(decode_square(data, size))
        except Exception as err:  # ingest checked every stored image: one that fails now is a broken shard
            raise ValueError(f"evaluation sample {i}: the stored image does not decode ({err})") from err
    return torch.from_numpy(np.stack(out)) if out else torch.zeros((0, size, size, 3), dtype=torch.uint8)


def model_pixels(squares: torch.Tensor, size: int) -> torch.Tensor:
    """float [B, 3, size, size] pixel values of uint8 [B, S, S, 3] squares, as training's held-out views are made
    (``ContrastiveModule.view`` without augmentation): antialiased resize to the model's size, mean = std = 0.5."""
    from pretrain.model.vision import normalize as normalize_pixels
    from pretrain.train.augment import resize

    return normalize_pixels(resize(squares, size))


def thumbnail(pixels: torch.Tensor) -> str:
    """A ``data:image/png;base64,...`` URI of one image's pixel values [3, H, W] (for the report)."""
    from PIL import Image

    rgb = (pixels.float() * 0.5 + 0.5).clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0)
    buf = io.BytesIO()
    Image.fromarray(rgb.numpy()).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# -- features --------------------------------------------------------------------------------------------------
class Encoder(Protocol):
    """What the evaluation needs of a model: image features, and (clip) caption features."""

    def images(self, pixel_values: torch.Tensor) -> torch.Tensor: ...

    def texts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor: ...


def _pooled(out: Any) -> torch.Tensor:
    """transformers 5's ``get_*_features`` return an output whose ``pooler_output`` is projected; 4 a tensor."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class HFEncoder:
    """A ``CLIPModel`` (projected image / text features) or a ``ViTModel`` (the CLS token's last hidden state)."""

    def __init__(self, model) -> None:
        self.model = model.eval()
        self.clip = model.config.model_type == "clip"

    def images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.clip:
            return _pooled(self.model.get_image_features(pixel_values=pixel_values))
        return self.model(pixel_values=pixel_values).last_hidden_state[:, 0]

    def texts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if not self.clip:
            raise TypeError(f"a {self.model.config.model_type} model has no text tower")
        return _pooled(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))


@torch.no_grad()
def image_features(encoder: Encoder, squares: torch.Tensor, size: int, batch: int = BATCH) -> torch.Tensor:
    """float32 features of uint8 squares (``load_images``) at the model's image ``size``, in batches."""
    parts = [encoder.images(model_pixels(squares[i:i + batch], size)).float() for i in range(0, len(squares), batch)]
    return torch.cat(parts) if parts else torch.zeros(0)


@torch.no_grad()
def text_features(encoder: Encoder, captions: Sequence[Sequence[int]], pad_id: int, batch: int = BATCH
                  ) -> torch.Tensor:
    """float32 features of token-id captions, right-padded with ``pad_id`` per batch (mask 1 on real tokens)."""
    parts = []
    for i in range(0, len(captions), batch):
        chunk = captions[i:i + batch]
        width = max(1, *(len(c) for c in chunk))
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for r, c in enumerate(chunk):
            ids[r, :len(c)] = torch.tensor(list(c), dtype=torch.long)
            mask[r, :len(c)] = 1
        parts.append(encoder.texts(ids, mask).float())
    return torch.cat(parts) if parts else torch.zeros(0)


def _labelled(labels: Sequence[int], limit: int, seed: int) -> list[int]:
    """Positions of labelled rows, at most ``limit`` of them, a seeded choice (in position order)."""
    found = [i for i, label in enumerate(labels) if label is not None and label >= 0]
    if len(found) > limit:
        found = sorted(random.Random(seed).sample(found, limit))
    return found


# -- the whole evaluation --------------------------------------------------------------------------------------
def untrained_like(model, seed: int):
    """A model of the same class and config, freshly initialized from ``seed`` as training initializes it
    (``pretrain.model.vision.init_vision``): the floor training rose from."""
    kwargs = {"add_pooling_layer": False} if getattr(model, "pooler", ...) is None else {}  # a ViT without pooler
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        twin = type(model)(model.config, **kwargs)
    try:
        from pretrain.model.vision import init_vision
    except ImportError:  # a tree without the vision module: the class's own init, drawn from the seed above
        return twin.eval()
    init_vision(twin, seed)
    return twin.eval()


def stored_size(samples: Manifest, image_size: int) -> int:
    """The samples' stored size (the loader decodes to it before resizing to the model's), else the model's."""
    return int(samples.extra.get("image_size") or image_size)


def image_size_of(config) -> int:
    vision = getattr(config, "vision_config", None)
    return int((vision or config).image_size)


def evaluate_encoders(encoders: dict[str, Encoder], samples: Manifest, *, image_size: int, pool: int,
                      probe: bool = True, seed: int = 0, batch: int = BATCH, retrieval: bool = True) -> dict[str, Any]:
    """Retrieval (an image_text manifest: captions, and encoders with a text tower; ``retrieval`` False skips it)
    and the probe, for each encoder (``trained``, ``untrained``, ...), on the samples manifest's splits. Returns the
    report's ``images`` part."""
    image_text = samples.extra.get("modality", "image_text") == "image_text"
    val_shards = split_shards(samples, "val")
    if not val_shards:
        raise RecipeError("evaluation: the samples manifest has no validation shards (meta split 'val'): raise "
                          "split.val_fraction")
    val = read_columns(val_shards, ["text", "label"])
    out: dict[str, Any] = {"modality": "image_text" if image_text else "image", "image_size": image_size,
                           "val_samples": len(val["text"]), "labels": list(samples.extra.get("labels") or []),
                           "retrieval": None, "probe": None, "examples": [], "notes": []}
    if image_text and retrieval:
        out["retrieval"], out["examples"] = _retrieval_part(encoders, samples, val["text"], image_size, pool, seed,
                                                            batch)
    if not probe:
        out["notes"].append("Linear probe: off (evaluate.probe is false).")
    else:
        out["probe"], examples = _probe_part(encoders, samples, val["label"], out["labels"], image_size, seed, batch)
        out["examples"] = out["examples"] or examples
        if "skipped" in out["probe"]:
            out["notes"].append(f"Linear probe skipped: {out['probe']['skipped']}.")
    return out


def _retrieval_part(encoders: dict[str, Encoder], samples: Manifest, texts: list[str], image_size: int, pool: int,
                    seed: int, batch: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Retrieval results (with chance) per encoder, and the trained model's picks for the first pool's first few."""
    shards = split_shards(samples, "val")
    pad = samples.extra.get("pad_id")
    pad = int(samples.extra.get("eos_id", 0) if pad is None else pad)
    pools = retrieval_pools(texts, pool, seed)
    chosen = [i for p in pools for i in p]
    rows = take_rows(shards, ["image", "caption", "text"], chosen)
    local = [list(range(n * pool, (n + 1) * pool)) for n in range(len(pools))]  # positions in ``rows``
    images = load_images(rows["image"], stored_size(samples, image_size))
    result: dict[str, Any] = {"pool": pool, "pools": len(pools), "samples": len(chosen),
                              "distinct_captions": len({caption_key(t) for t in texts} - {""}),
                              "chance": {f"recall_at_{k}": min(1.0, k / pool) for k in (1, 5)}}
    examples: list[dict[str, Any]] = []
    for name, enc in encoders.items():
        img = image_features(enc, images, image_size, batch)
        txt = text_features(enc, rows["caption"], pad, batch)
        result[name], top, hit = retrieval(img, txt, local)
        if name == "trained":
            shown = model_pixels(images[:EXAMPLES], image_size)  # the first pool's first few
            examples = [{"image": thumbnail(shown[j]), "caption": rows["text"][j], "retrieved": rows["text"][top[j]],
                         "hit": hit[j]} for j in range(len(shown))]
    return result, examples


def _probe_part(encoders: dict[str, Encoder], samples: Manifest, val_labels: list[int], labels: list[str],
                image_size: int, seed: int, batch: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Probe and k-NN results (with chance) per encoder, or ``{"skipped": why}``; and the trained probe's
    predictions for the first few validation images."""
    train_shards, val_shards = split_shards(samples, "train"), split_shards(samples, "val")
    if not samples.extra.get("labels", True):  # the manifest says: no sample has a label
        return {"skipped": "no labelled samples in the train and validation splits"}, []
    t_pos, train_labels = labelled_groups(train_shards, PROBE_TRAIN, seed)
    v_pos = _labelled(val_labels, PROBE_VAL, seed + 1)
    train_y = torch.tensor(train_labels, dtype=torch.long)
    val_y = torch.tensor([val_labels[i] for i in v_pos], dtype=torch.long)
    if not len(train_y) or not len(val_y):
        where = ("train and validation splits" if not len(train_y) and not len(val_y)
                 else "train split" if not len(train_y) else "validation split")
        return {"skipped": f"no labelled samples in the {where}"}, []
    if len(torch.unique(train_y)) < 2:
        return {"skipped": "the train split's labelled samples are all of one class"}, []
    stored = stored_size(samples, image_size)
    train_images = load_images(take_rows(train_shards, ["image"], t_pos)["image"], stored)
    val_images = load_images(take_rows(val_shards, ["image"], v_pos)["image"], stored)
    result: dict[str, Any] = {"classes": len(torch.unique(torch.cat([train_y, val_y]))),
                              "train_samples": len(t_pos), "val_samples": len(v_pos), "chance": majority_share(val_y)}
    examples: list[dict[str, Any]] = []
    for name, enc in encoders.items():
        tx = image_features(enc, train_images, image_size, batch)
        vx = image_features(enc, val_images, image_size, batch)
        fitted = linear_probe(tx, train_y, vx, val_y, seed=seed)
        result[name] = {"accuracy": fitted["accuracy"], "knn_accuracy": knn_accuracy(tx, train_y, vx, val_y),
                        "weight_decay": fitted["weight_decay"]}
        if name == "trained":
            guess, shown = fitted["predicted"], model_pixels(val_images[:EXAMPLES], image_size)
            examples = [{"image": thumbnail(shown[j]), "caption": _name(labels, int(val_y[j])),
                         "retrieved": _name(labels, guess[j]), "hit": guess[j] == int(val_y[j])}
                        for j in range(len(shown))]
    return result, examples


def _name(labels: Sequence[str], i: int) -> str:
    return str(labels[i]) if 0 <= i < len(labels) else str(i)


def evaluate_model(model_dir: str, samples: Manifest, *, pool: int, probe: bool = True, seed: int = 0,
                   batch: int = BATCH, retrieval: bool = True) -> dict[str, Any]:
    """``evaluate_encoders`` for the exported folder (``AutoModel``: CLIPModel or ViTModel) and an untrained twin."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(model_dir, dtype=torch.float32)
    size = image_size_of(model.config)
    encoders: dict[str, Encoder] = {"trained": HFEncoder(model), "untrained": HFEncoder(untrained_like(model, seed))}
    result = evaluate_encoders(encoders, samples, image_size=size, pool=pool, probe=probe, seed=seed, batch=batch,
                               retrieval=retrieval)
    result["model"] = model.config.model_type
    return result


# -- flat numbers for KFP Metrics ------------------------------------------------------------------------------
def flat_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The headline numbers with flat names (``retrieval_i2t_recall_at_1``, ``..._vs_chance``,
    ``untrained_...``, ``probe_accuracy``, ...). ``_vs_chance`` is trained / chance; ``_vs_untrained`` is trained /
    the untrained model's figure floored at chance (an untrained model's recall on one pool can be 0)."""
    out: dict[str, float] = {}
    r = result.get("retrieval") or {}
    if r.get("trained"):
        out["retrieval_pool"], out["retrieval_pools"] = float(r["pool"]), float(r["pools"])
        for k in (1, 5):
            chance = r["chance"][f"recall_at_{k}"]
            out[f"retrieval_recall_at_{k}_chance"] = chance
            for model in ("trained", "untrained"):
                row = r.get(model) or {}
                if f"i2t_recall_at_{k}" in row:
                    row = {**row, f"recall_at_{k}": (row[f"i2t_recall_at_{k}"] + row[f"t2i_recall_at_{k}"]) / 2}
                prefix = "untrained_" if model == "untrained" else ""
                for key in (f"i2t_recall_at_{k}", f"t2i_recall_at_{k}", f"recall_at_{k}"):
                    if key in row:
                        out[f"{prefix}retrieval_{key}"] = row[key]
            for key in (f"i2t_recall_at_{k}", f"t2i_recall_at_{k}", f"recall_at_{k}"):
                value = out.get(f"retrieval_{key}")
                if value is not None and chance > 0:
                    out[f"retrieval_{key}_vs_chance"] = value / chance
                    floor = max(out.get(f"untrained_retrieval_{key}", 0.0), chance)
                    out[f"retrieval_{key}_vs_untrained"] = value / floor
    p = result.get("probe") or {}
    if p.get("trained"):
        out["probe_chance"] = p["chance"]
        out["probe_classes"], out["probe_train_samples"] = float(p["classes"]), float(p["train_samples"])
        out["probe_val_samples"] = float(p["val_samples"])
        for model in ("trained", "untrained"):
            prefix = "untrained_" if model == "untrained" else ""
            row = p.get(model) or {}
            if "accuracy" in row:
                out[f"{prefix}probe_accuracy"] = row["accuracy"]
            if row.get("knn_accuracy") is not None:
                out[f"{prefix}knn_accuracy"] = row["knn_accuracy"]
        if p["chance"] > 0:
            out["probe_accuracy_vs_chance"] = p["trained"]["accuracy"] / p["chance"]
    return {k: float(v) for k, v in out.items() if math.isfinite(float(v))}
