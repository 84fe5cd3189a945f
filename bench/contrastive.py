"""Contrastive pre-training on CPU: a short CLIP run on rendered shapes, and the image ingest's speed.

Runs with no arguments. Renders its own image-text set (``pretrain.data.samples.shapes``: shapes whose captions
say what colour, size and where they are; the label is the shape), then:

- ingest speed: the ``images`` reader + Pillow decode / checks / pHash / resize / re-encode of ``--ingest-images``
  images rendered at 256 px, in this one process (``ingest_images_per_s_per_core``), next to the anchor, a plain
  Pillow loop doing only open -> RGB -> resize -> PNG on the same files (``anchor_images_per_s_per_core``);
- the whole pipeline on the bundled ``clip-tiny`` recipe (ingest, image and caption rules, exact and pHash dedup,
  caption tokenizer and split, ``torchrun`` CLIPModel training with symmetric InfoNCE and negatives gathered
  across the 2 ranks, HF export, evaluation), then zero-shot retrieval on held-out pools of
  ``evaluate.retrieval_pool`` (100) samples with distinct captions:
  ``recall_at_1`` (the mean of image->text and text->image), ``vs_chance`` (recall@1 over chance = 1 / pool; goal
  >= 3) and ``vs_untrained`` (over an untrained model of the same shape, floored at chance).

The LAST line printed is one JSON object with ``recall_at_1``, ``vs_chance``, ``vs_untrained`` first.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import tempfile
import time
from pathlib import Path


def log(message: str) -> None:
    print(f"[contrastive-bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def ingest_rate(folder: Path, run_root: Path, repeats: int) -> tuple[float, float, int]:
    """(our images/s, the plain Pillow loop's images/s, images) on one core, medians of ``repeats``."""
    from PIL import Image

    from pretrain.config import load_recipe
    from pretrain.data.readers import images as reader
    from pretrain.data.readers.base import ReadStats

    recipe = load_recipe("clip-tiny", [f"sources.0.uri={folder}", f"run_root={run_root}"])
    src = recipe.sources[0]
    files = sorted(p for p in folder.rglob("*.png"))
    ours, anchor = [], []
    for _ in range(repeats):
        start = time.process_time()
        stats = ReadStats()
        n = 0
        for part in reader.plan(src, src.uri):
            n += sum(1 for _ in reader.read(src, part, stats, images=recipe.images))
        ours.append(n / (time.process_time() - start))
        start = time.process_time()
        for path in files:
            with Image.open(path) as img:
                small = img.convert("RGB")
                small.thumbnail((recipe.images.size * 10, recipe.images.size), Image.Resampling.LANCZOS)
                small.save(io.BytesIO(), format="PNG")
        anchor.append(len(files) / (time.process_time() - start))
    return statistics.median(ours), statistics.median(anchor), n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ingest-images", type=int, default=512, help="images rendered at 256 px for the ingest rate")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=None, help="builtin:shapes images (default: the recipe's)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the recipe's)")
    parser.add_argument("--keep", default=None, help="a run root to keep (and reuse) instead of a temp dir")
    args = parser.parse_args()

    import torch

    from pretrain import steps
    from pretrain.config import load_recipe
    from pretrain.data.samples import shapes
    from pretrain.manifest import Manifest

    with tempfile.TemporaryDirectory(prefix="contrastive-bench-") as tmp:
        folder = Path(tmp) / "shapes256"
        shapes.write_folder(folder, args.ingest_images, seed=1, size=256)
        ours, anchor, n = ingest_rate(folder, Path(tmp) / "ingest-run", args.repeats)
        log(f"ingest: {ours:.0f} images/s per core (anchor: plain Pillow loop {anchor:.0f}/s) over {n} images")

        overrides = [f"run_root={args.keep or Path(tmp) / 'run'}"]
        if args.images:
            overrides.append(f"sources.0.builtin_images={args.images}")
        if args.steps:
            overrides.append(f"train.max_steps={args.steps}")
        recipe = load_recipe("clip-tiny", overrides)
        start = time.monotonic()
        steps.evaluate(recipe)
        elapsed = time.monotonic() - start
        ev = Manifest.load(recipe.url("evaluate")).stats
        train = Manifest.load(recipe.url("train")).stats
        tokens = Manifest.load(recipe.url("tokens")).stats
        nan = float("nan")
        log(f"pipeline: {elapsed:.0f} s; recall@1 {ev['retrieval_recall_at_1']:.3f} (untrained "
            f"{ev['untrained_retrieval_recall_at_1']:.3f}, chance {ev['retrieval_recall_at_1_chance']:.3f}); "
            f"probe {ev.get('probe_accuracy', nan):.3f} (untrained {ev.get('untrained_probe_accuracy', nan):.3f}, "
            f"chance {ev.get('probe_chance', nan):.3f})")

    result = {
        "recall_at_1": round(ev["retrieval_recall_at_1"], 4),
        "vs_chance": round(ev["retrieval_recall_at_1_vs_chance"], 2),
        "vs_untrained": round(ev["retrieval_recall_at_1_vs_untrained"], 2),
        "ingest_images_per_s_per_core": round(ours, 1),
        "anchor_images_per_s_per_core": round(anchor, 1),
        "ingest_vs_pillow_loop": round(ours / anchor, 2),
        "recall_at_5": round(ev["retrieval_recall_at_5"], 4),
        "i2t_recall_at_1": round(ev["retrieval_i2t_recall_at_1"], 4),
        "t2i_recall_at_1": round(ev["retrieval_t2i_recall_at_1"], 4),
        "untrained_recall_at_1": round(ev["untrained_retrieval_recall_at_1"], 4),
        "chance_recall_at_1": round(ev["retrieval_recall_at_1_chance"], 4),
        "retrieval_pool": ev["retrieval_pool"], "retrieval_pools": ev["retrieval_pools"],
        "probe_accuracy": ev.get("probe_accuracy"), "untrained_probe_accuracy": ev.get("untrained_probe_accuracy"),
        "probe_chance": ev.get("probe_chance"),
        "train_samples": tokens.get("train_samples"), "val_samples": tokens.get("val_samples"),
        "steps": train.get("steps"), "final_val_loss": train.get("final_val_loss"),
        "pipeline_seconds": round(elapsed, 1), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
