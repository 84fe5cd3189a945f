"""Image training through ``pretrain.train`` on a tiny generated set: CLIP learns on 2 ranks (FSDP2, negatives
gathered) and exports a folder ``transformers.AutoModel`` loads with the same features; SimCLR resumes bit-exactly
after kill -9."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from image_set import COLOURS, SHAPES, samples, write_image_run

from pretrain.manifest import Manifest
from pretrain.model.vision import image_features, pixel_values, text_features
from pretrain.tokens.images import image_data

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def rows(root: Path) -> list[dict]:
    path = root / "train" / "metrics.jsonl"
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        with contextlib.suppress(json.JSONDecodeError):  # a line being written
            out.append(json.loads(line))
    return out


def committed(root: Path) -> list[int]:
    return sorted(int(p.parent.name[5:]) for p in (root / "checkpoints").glob("step-*/_COMMITTED"))


def retrieval_accuracy(model, manifest: Manifest, tokenizer) -> float:
    """Each held-out image picks its caption among the 16 distinct ones (chance 1/16)."""
    _, val = image_data(manifest, 0, 8)
    batch = next(val.batches(128))
    captions = [f"{c} {s}" for c in COLOURS for s in SHAPES]
    truth = torch.tensor([captions.index(c) for c, _, _ in samples(128, 1)])
    eos, pad = manifest.extra["eos_id"], manifest.extra["pad_id"]
    ids, mask = torch.full((16, 8), pad), torch.zeros(16, 8, dtype=torch.long)
    for i, caption in enumerate(captions):
        encoded = [*tokenizer(caption)["input_ids"], eos]  # the tokenizer adds no EOS: captions end with one
        ids[i, :len(encoded)], mask[i, :len(encoded)] = torch.tensor(encoded), 1
    with torch.no_grad():
        image = F.normalize(image_features(model, pixel_values(torch.from_numpy(batch.images))), dim=-1)
        text = F.normalize(text_features(model, ids, mask), dim=-1)
    return ((image @ text.T).argmax(dim=1) == truth).float().mean().item()


def test_clip_learns_on_two_ranks_with_fsdp_and_exports_an_automodel_folder(tmp_path):
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    from pretrain.model.export import export_model, skeleton
    from pretrain.train.checkpoint import load_model_weights

    root = tmp_path / "clip"
    recipe, url = write_image_run(str(root), ["train.max_steps=100", "train.parallel=fsdp", "train.lr=0.002",
                                              "train.micro_batch_size=16", "train.eval_interval=100",
                                              "train.checkpoint_interval=100", "train.log_interval=20"])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m",
           "pretrain.train", "--config", url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=ENV)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    history = rows(root)
    evals = [r for r in history if "val_loss" in r]
    assert [r["step"] for r in evals] == [0, 100]
    assert evals[-1]["val_loss"] < 0.7 * evals[0]["val_loss"]
    assert evals[-1]["val_accuracy"] > 3 * evals[0]["val_accuracy"]
    logged = [r for r in history if "loss" in r]
    assert "samples_per_second" in logged[-1] and "tokens_per_second" not in logged[-1]
    summary = json.loads((root / "train" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["trained_samples_by_source"] == {"shapes": 100 * 16 * 2}

    tokens = Manifest.load(recipe.url("tokens"))
    latest = str(root / "checkpoints" / "step-0000100")
    checkpoints = Manifest(kind="checkpoints", root=str(root / "train"), fingerprint="clip-test",
                           stats={"steps": 100, "world_size": 2}, extra={"latest": latest, "history": history})
    result = export_model(recipe, checkpoints, tokens)
    folder = recipe.url("model")
    files = {s.url.rsplit("/", 1)[-1] for s in result.shards}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.json", "README.md"} <= files
    exported = AutoModel.from_pretrained(folder).eval()
    assert type(exported).__name__ == "CLIPModel"
    processor = AutoImageProcessor.from_pretrained(folder)
    assert list(processor.image_mean) == [0.5] * 3 and processor.crop_size["height"] == 32
    tokenizer = AutoTokenizer.from_pretrained(folder)

    trained = skeleton(recipe, tokens)  # the checkpoint as training left it: module, head and [1]-shaped scale
    load_model_weights(latest, trained)
    images = pixel_values(torch.from_numpy(next(image_data(tokens, 0, 8)[1].batches(16)).images))
    with torch.no_grad():
        assert torch.allclose(image_features(exported, images), image_features(trained.model, images), atol=1e-5)
    assert exported.logit_scale.shape == ()
    assert abs(exported.logit_scale.item() - trained.model.logit_scale.item()) < 1e-6

    learned, untrained = retrieval_accuracy(exported, tokens, tokenizer), retrieval_accuracy(
        skeleton(recipe, tokens).model, tokens, tokenizer)
    print(f"clip: val_loss {evals[0]['val_loss']} -> {evals[-1]['val_loss']}, in-batch accuracy "
          f"{evals[0]['val_accuracy']} -> {evals[-1]['val_accuracy']}; retrieval among 16 captions {learned:.3f} "
          f"(untrained {untrained:.3f}, chance {1 / 16:.3f})")
    assert learned >= 3 / 16 and learned > untrained + 0.1, (learned, untrained)


def test_simclr_resumes_bit_exactly_after_kill_9(tmp_path):
    from pretrain.config import load_recipe
    from pretrain.train.loop import train

    common = ["train.max_steps=16", "train.checkpoint_interval=6", "train.eval_interval=16", "train.warmup_steps=2",
              "train.micro_batch_size=16"]
    whole_root = tmp_path / "whole"
    whole_recipe, _ = write_image_run(str(whole_root), common, objective="image_contrastive", train=256, val=64)
    whole = train(whole_recipe)
    evals = [r for r in whole["history"] if "val_loss" in r]
    print(f"simclr: val_loss {evals[0]['val_loss']} -> {evals[-1]['val_loss']}, in-batch accuracy "
          f"{evals[0]['val_accuracy']} -> {evals[-1]['val_accuracy']}")
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]  # it learns something in 16 steps

    root = tmp_path / "killed"
    _, url = write_image_run(str(root), common, objective="image_contrastive", train=256, val=64)
    proc = subprocess.Popen([sys.executable, "-m", "pretrain.train", "--config", url], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=ENV)
    deadline = time.monotonic() + 120
    while not (6 in committed(root) and max((r["step"] for r in rows(root) if "loss" in r), default=0) >= 8):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert committed(root)[-1] in (6, 12) and 16 not in committed(root)
    again = train(load_recipe(url))
    assert again["step"] == 16
    expected = {r["step"]: r["loss"] for r in whole["history"] if "loss" in r}
    got = {r["step"]: r["loss"] for r in rows(root) if "loss" in r}
    assert [got[s] for s in range(7, 17)] == [expected[s] for s in range(7, 17)]  # identical, not close
    def weights(run: Path) -> dict:
        from pretrain.model.export import skeleton
        from pretrain.train.checkpoint import load_model_weights

        module = skeleton(load_recipe(str(run / "recipe.yaml")), Manifest.load(str(run / "tokens")))
        load_model_weights(str(run / "checkpoints" / "step-0000016"), module)
        return module.state_dict()

    a, b = weights(whole_root), weights(root)
    assert a.keys() == b.keys() and any(k.startswith("head.") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)

    # the export: the ViT alone (its pooler included, trained as the head's first layer), no SimCLR head
    from transformers import AutoModel

    from pretrain.model.export import export_model

    tokens = Manifest.load(str(root / "tokens"))
    latest = str(root / "checkpoints" / "step-0000016")
    checkpoints = Manifest(kind="checkpoints", root=str(root / "train"), fingerprint="simclr-test",
                           stats={"steps": 16}, extra={"latest": latest, "history": rows(root)})
    recipe = load_recipe(url)
    export_model(recipe, checkpoints, tokens)
    exported, info = AutoModel.from_pretrained(recipe.url("model"), output_loading_info=True)
    assert type(exported).__name__ == "ViTModel" and not info["missing_keys"] and not info["unexpected_keys"]
    assert not (Path(recipe.url("model")) / "tokenizer.json").exists()  # an image-only run has no tokenizer
    images = pixel_values(torch.from_numpy(next(image_data(tokens, 0, 8)[1].batches(8)).images))
    with torch.no_grad():
        cls = exported.eval()(pixel_values=images).last_hidden_state[:, 0]
        trained = {k.removeprefix("model."): v for k, v in b.items() if k.startswith("model.")}
        exported.load_state_dict(trained)
        assert torch.equal(exported(pixel_values=images).last_hidden_state[:, 0], cls)
