"""A tiny image-text set the tests make themselves: rendered shapes whose captions say what and where they are.

Each image is one shape (the label: circle, square, triangle, star) in one of 8 colours, small or large, at
one of 9 positions, on a tinted gradient with soft blotches, pixel noise and a little clutter: "a small red
circle at the top left". The 576 (shape, colour, size, position) combinations come in a seeded shuffled
order, cycled, so every prefix of the set is about balanced over labels and captions. Image ``i`` depends
only on ``(seed, i)`` (its own random generator), so ``render(n)`` is a prefix of ``render(n + 1)``.

No two images are exact copies (noise), and few are near-copies by pHash (a random gradient and blotches,
jittered position, size, rotation and colour): of 2048 images (seed 0) 0.4% have another within Hamming
distance 4, dedup's default (``tests/unit/test_reader_images.py`` holds it under 2%). Writers lay the set
out as every image format reads it: a folder (``images``, label sub-folders, ``.txt`` captions), WebDataset
tar shards, JSON Lines with image paths, Parquet with image bytes. ``builtin:shapes`` is the folder, built
once under the run root.
"""

from __future__ import annotations

import functools
import io
import json
import math
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star")
COLOURS = {
    "red": (215, 35, 35), "green": (35, 165, 55), "blue": (35, 70, 215), "yellow": (240, 205, 25),
    "purple": (135, 45, 175), "orange": (240, 130, 25), "pink": (240, 110, 185), "cyan": (25, 185, 200),
}
# name -> (x, y) as fractions of the side, and how a caption says it
POSITIONS = {
    "top left": ((0.25, 0.25), "at the top left"), "top": ((0.5, 0.25), "at the top"),
    "top right": ((0.75, 0.25), "at the top right"), "left": ((0.25, 0.5), "on the left"),
    "centre": ((0.5, 0.5), "in the centre"), "right": ((0.75, 0.5), "on the right"),
    "bottom left": ((0.25, 0.75), "at the bottom left"), "bottom": ((0.5, 0.75), "at the bottom"),
    "bottom right": ((0.75, 0.75), "at the bottom right"),
}
SIZES = {"small": 0.11, "large": 0.19}  # radius as a fraction of the side
BLOTCHES = 12.0  # the background's soft random field, grey levels (standard deviation)
BUILTIN_SEED = 0
BUILTIN_SIZE = 64


@functools.lru_cache(maxsize=4)
def _combinations(seed: int) -> tuple[tuple[str, str, str, str], ...]:
    """Every (shape, colour, size, position), in a shuffled order fixed by ``seed``."""
    combos = [(s, c, z, p) for s in SHAPES for c in COLOURS for z in SIZES for p in POSITIONS]
    order = np.random.default_rng(seed).permutation(len(combos))
    return tuple(combos[i] for i in order)


def caption(shape: str, colour: str, size: str, position: str) -> str:
    return f"a {size} {colour} {shape} {POSITIONS[position][1]}"


def captions() -> list[str]:
    """Every caption the set can hold (576)."""
    return sorted({caption(*c) for c in _combinations(0)})


@functools.lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size
    return np.meshgrid(axis, axis)


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """A light, low-saturation gradient at a random angle, soft random blotches, pixel noise.

    The blotches (a 5x5 random field, upsampled) vary the low frequencies pHash looks at: without them 14% of
    2048 images had a near-copy (distance <= 4), with them 0.4%."""
    xx, yy = _grid(size)
    angle = rng.uniform(0, 2 * math.pi)
    t = xx * math.cos(angle) + yy * math.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    ends = [rng.uniform(140, 235) + rng.uniform(-18, 18, 3) for _ in range(2)]
    img = ends[0] + (ends[1] - ends[0]) * t[..., None]
    field = Image.fromarray(rng.normal(0, BLOTCHES, (5, 5)).astype(np.float32), "F")
    img += np.asarray(field.resize((size, size), Image.Resampling.BICUBIC))[..., None]
    img += rng.normal(0, 6, (size, size, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def _clutter(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int) -> None:
    """A few thin grey lines and dots: texture a model must learn to ignore."""
    for _ in range(int(rng.integers(2, 6))):
        grey = int(rng.integers(90, 170))
        x0, y0, x1, y1 = (float(v) for v in rng.uniform(0, size, 4))
        if rng.random() < 0.5:
            draw.line((x0, y0, x1, y1), fill=(grey, grey, grey), width=1)
        else:
            r = size * 0.015
            draw.ellipse((x0 - r, y0 - r, x0 + r, y0 + r), fill=(grey, grey, grey))


def _polygon(shape: str, cx: float, cy: float, r: float, turn: float) -> list[tuple[float, float]]:
    if shape == "square":
        corners = [turn + math.pi / 4 + k * math.pi / 2 for k in range(4)]
        return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in corners]
    if shape == "triangle":
        corners = [turn - math.pi / 2 + k * 2 * math.pi / 3 for k in range(3)]
        return [(cx + r * 1.15 * math.cos(a), cy + r * 1.15 * math.sin(a)) for a in corners]
    points = []  # star: 5 points, inner radius 0.45
    for k in range(10):
        a = turn - math.pi / 2 + k * math.pi / 5
        rr = r * 1.2 if k % 2 == 0 else r * 0.5
        points.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
    return points


def render_one(i: int, seed: int = 0, size: int = 64) -> tuple[Image.Image, str, str]:
    """Image ``i`` of the set of ``seed``: (the image, its caption, its label)."""
    combos = _combinations(seed)
    shape, colour, size_name, position = combos[i % len(combos)]
    rng = np.random.default_rng((seed, i))
    img = _background(rng, size)
    draw = ImageDraw.Draw(img)
    _clutter(draw, rng, size)
    (fx, fy), _ = POSITIONS[position]
    cx, cy = (fx + rng.uniform(-0.05, 0.05)) * size, (fy + rng.uniform(-0.05, 0.05)) * size
    r = SIZES[size_name] * size * rng.uniform(0.88, 1.12)
    fill = tuple(int(np.clip(v + rng.integers(-18, 19), 0, 255)) for v in COLOURS[colour])
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        draw.polygon(_polygon(shape, cx, cy, r, rng.uniform(-0.35, 0.35)), fill=fill)
    return img, caption(shape, colour, size_name, position), shape


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def render(n: int, seed: int = 0, size: int = 64) -> Iterator[tuple[bytes, str, str]]:
    """``n`` images as (PNG bytes, caption, label)."""
    for i in range(n):
        img, text, label = render_one(i, seed, size)
        yield _png(img), text, label


def write_folder(path: str | Path, n: int, seed: int = 0, size: int = 64) -> str:
    """The ``images`` layout: ``<label>/<i>.png`` with the caption in ``<label>/<i>.txt`` beside it."""
    root = Path(path)
    for label in SHAPES:
        (root / label).mkdir(parents=True, exist_ok=True)
    for i, (png, text, label) in enumerate(render(n, seed, size)):
        (root / label / f"{i:05d}.png").write_bytes(png)
        (root / label / f"{i:05d}.txt").write_text(text, encoding="utf-8")
    return str(root)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


def write_webdataset(path: str | Path, n: int, seed: int = 0, size: int = 64, per_shard: int = 256,
                     gzip: bool = False) -> str:
    """WebDataset shards ``shapes-00000.tar`` (or ``.tar.gz``): ``<key>.png``, ``<key>.txt``, ``<key>.cls``."""
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    suffix, mode = (".tar.gz", "w:gz") if gzip else (".tar", "w")
    samples = render(n, seed, size)
    for shard in range(math.ceil(n / per_shard)):
        with tarfile.open(root / f"shapes-{shard:05d}{suffix}", mode, format=tarfile.USTAR_FORMAT) as tar:
            for i in range(shard * per_shard, min(n, (shard + 1) * per_shard)):
                png, text, label = next(samples)
                key = f"{i:06d}"
                _add(tar, f"{key}.png", png)
                _add(tar, f"{key}.txt", text.encode("utf-8"))
                _add(tar, f"{key}.cls", label.encode("utf-8"))
    return str(root)


def write_jsonl(path: str | Path, n: int, seed: int = 0, size: int = 64) -> str:
    """JSON Lines of ``id``, ``image`` (a PNG path relative to the file: ``images/<i>.png``), ``text``, ``label``."""
    path = Path(path)
    (path.parent / "images").mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for i, (png, text, label) in enumerate(render(n, seed, size)):
            rel = f"images/{i:05d}.png"
            (path.parent / rel).write_bytes(png)
            f.write(json.dumps({"id": f"shape-{i:05d}", "image": rel, "text": text, "label": label}) + "\n")
    return str(path)


def write_parquet(path: str | Path, n: int, seed: int = 0, size: int = 64, row_group_size: int = 256) -> str:
    """Parquet of ``id``, ``image`` (PNG bytes), ``text``, ``label``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = list(render(n, seed, size))
    table = pa.table({"id": [f"shape-{i:05d}" for i in range(n)], "image": pa.array([r[0] for r in rows], pa.binary()),
                      "text": [r[1] for r in rows], "label": [r[2] for r in rows]})
    pq.write_table(table, path, row_group_size=row_group_size, compression="zstd")
    return str(path)


def write_builtin(location: str, n: int) -> str:
    """``builtin:shapes``: the folder layout of ``n`` images at ``location`` (local or s3://), built once.

    A ``.built.json`` marker (hidden from listings), written last, names what the folder holds; without it (or
    with another spec) the folder is removed and built again.
    """
    from pretrain import storage
    from pretrain.config import code_version

    marker = storage.join(location, ".built.json")
    wanted = {"images": n, "seed": BUILTIN_SEED, "size": BUILTIN_SIZE, "code": code_version()}
    try:
        if storage.read_json(marker).get("spec") == wanted:
            return location
    except (FileNotFoundError, ValueError, AttributeError):
        pass
    storage.remove(location)  # a half-built or differently sized set: start over
    if storage.is_remote(location):
        with tempfile.TemporaryDirectory() as tmp:
            write_folder(tmp, n, BUILTIN_SEED, BUILTIN_SIZE)
            storage.upload_dir(tmp, location)
    else:
        write_folder(location, n, BUILTIN_SEED, BUILTIN_SIZE)
    storage.write_json(marker, {"spec": wanted})
    return location
