"""The whole DAG on image-text pairs, really run through KFP's local runner by the CLI: CLIP on rendered shapes
(builtin:shapes) plus an images folder and WebDataset shards holding the bad inputs the issue names."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

from pretrain.manifest import Manifest

pytestmark = pytest.mark.e2e


def _bad_and_good_folder(folder: Path) -> None:
    """64 good shapes in label sub-folders, and beside them the inputs that must be skipped or dropped."""
    from PIL import Image

    from pretrain.data.samples import shapes

    shapes.write_folder(folder, 64, seed=3)
    bad = folder / "bad"
    bad.mkdir()
    jpeg = io.BytesIO()
    Image.new("RGB", (96, 96), (200, 30, 30)).save(jpeg, format="JPEG")
    (bad / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (bad / "empty.png").write_bytes(b"")
    (bad / "notes.jpg").write_bytes(b"this is not an image at all\n" * 10)
    Image.new("1", (20000, 20000)).save(bad / "bomb.png")  # ~50 KB on disk, 400M pixels decoded
    Image.new("RGB", (16, 16), (0, 0, 255)).save(bad / "tiny.png")  # decodes, dropped by filter.images.min_size
    for name in ("truncated", "empty", "notes", "bomb", "tiny"):
        (bad / f"{name}.txt").write_text(f"a caption of {name}")


def _webdataset(folder: Path) -> None:
    """128 good samples in two shards, and a third shard with one caption whose image is missing."""
    from pretrain.data.samples import shapes

    shapes.write_webdataset(folder, 128, seed=5, per_shard=64)
    with tarfile.open(folder / "orphans.tar", "w") as tar:
        data = b"a blue circle that never came"
        info = tarfile.TarInfo("orphan-0001.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def image_run(tmp_path_factory, pretrain_run) -> tuple[Path, subprocess.CompletedProcess, float]:
    from pretrain.config import builtin_recipe_path

    cwd = tmp_path_factory.mktemp("e2e-images")
    _bad_and_good_folder(cwd / "inputs" / "pics")
    _webdataset(cwd / "inputs" / "wds")
    recipe = yaml.safe_load(builtin_recipe_path("clip-tiny").read_text())
    recipe["sources"][0]["builtin_images"] = 1536
    recipe["sources"] += [
        {"name": "pics", "format": "images", "uri": str(cwd / "inputs" / "pics"), "label_field": "folder"},
        {"name": "wds", "format": "webdataset", "uri": str(cwd / "inputs" / "wds"), "label_field": "cls"},
    ]
    recipe["train"]["max_steps"] = 150
    recipe["train"]["eval_interval"] = 75
    recipe["train"]["checkpoint_interval"] = 75
    path = cwd / "clip.yaml"
    path.write_text(yaml.safe_dump(recipe))
    proc, elapsed = pretrain_run(path, cwd, timeout=420)
    return cwd / "runs" / "clip-tiny", proc, elapsed


def test_bad_images_are_skipped_and_counted_and_the_ledger_adds_up(image_run):
    root, proc, _ = image_run
    ledger = Manifest.load(str(root / "dedup")).extra["ledger"]
    assert ledger["total"]["balanced"]
    pics, wds = ledger["sources"]["pics"], ledger["sources"]["wds"]
    assert pics["skipped"] == {"empty_image": 1, "undecodable_image": 2, "too_many_pixels": 1}
    assert pics["dropped"] == {"images.min_size": 1} and pics["kept"] == 64
    assert wds["skipped"] == {"no_image": 1} and wds["kept"] == 128
    for row in ledger["sources"].values():
        assert row["read"] == row["written"] + sum(row["skipped"].values())
    assert "pics: read 69 = written 65 + skipped 4" in proc.stdout  # the ledger in the run summary
    samples = Manifest.load(str(root / "tokens"))
    assert samples.kind == "samples" and samples.extra["modality"] == "image_text"
    assert set(samples.stats["by_source"]) == {"shapes", "pics", "wds"}


def test_clip_learned_and_the_export_works_with_plain_transformers(image_run):
    import torch
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    from pretrain.data.documents import iter_batches

    root, proc, elapsed = image_run
    ev = Manifest.load(str(root / "evaluate")).stats
    assert ev["retrieval_pool"] == 100
    assert ev["retrieval_recall_at_1_vs_chance"] >= 3, ev  # the goal, on a 150-step CPU run
    assert ev["retrieval_recall_at_1_vs_untrained"] >= 2, ev
    assert ev["retrieval_recall_at_5"] >= ev["retrieval_recall_at_1"]
    assert "probe_accuracy" in ev and "untrained_probe_accuracy" in ev
    assert "recall@1 (image<->text)" in proc.stdout

    # a user's path: AutoModel + AutoImageProcessor + AutoTokenizer on the exported folder, nothing of ours
    folder = str(root / "model")
    model, processor, tokenizer = (AutoModel.from_pretrained(folder).eval(), AutoImageProcessor.from_pretrained(folder),
                                   AutoTokenizer.from_pretrained(folder))
    assert type(model).__name__ == "CLIPModel"
    val = next(s.url for s in Manifest.load(str(root / "tokens")).shards if s.meta["split"] == "val")
    rows = next(iter_batches(val, columns=["image", "text"], batch_size=64)).to_pylist()
    seen, picked = set(), []
    for row in rows:
        if row["text"] not in seen:
            seen.add(row["text"])
            picked.append(row)
    picked = picked[:16]
    from PIL import Image

    images = [Image.open(io.BytesIO(r["image"])) for r in picked]
    texts = tokenizer([r["text"] for r in picked], padding=True, truncation=True, return_tensors="pt")
    assert (texts["input_ids"] == model.config.text_config.eos_token_id).sum() == len(picked)  # one EOS each
    with torch.no_grad():
        out = model(**texts, **processor(images=images, return_tensors="pt"))
    right = (out.logits_per_image.argmax(dim=1) == torch.arange(len(picked))).float().mean().item()
    assert right >= 3 / len(picked), right  # chance is 1/16

    card = (root / "model" / "README.md").read_text()
    assert "zero-shot-image-classification" in card and "shapes" in card
    report = (root / "evaluate" / "report.html").read_text()
    assert "<script src" not in report and "<link" not in report and "data:image/png;base64," in report
    assert elapsed < 300, f"image run took {elapsed:.0f} s"
