"""Images: a folder (local or s3://) of image files, each with an optional caption beside it.

``photo.jpg`` takes its caption from ``photo.txt``, or from the ``caption`` (else ``text``) field of
``photo.json``, whose other fields go to ``meta``. ``label_field: folder`` labels an image by the
sub-folder it is in; another ``label_field`` names a field of the ``.json``. Every image file
(``.jpg .jpeg .png .webp .gif .bmp``, matched by ``include``/``exclude``) is one record: a sample, or
skipped with the decoder's reason (``pretrain.data.images``). Files larger than ``images.max_bytes``
are refused from the listing, never read.

The folder splits into ``partitions`` buckets by a hash of each file's path, so adding a file
changes only its own bucket. Files are fetched in batches (concurrent requests on S3).
"""

from __future__ import annotations

import dataclasses
import posixpath
from collections.abc import Iterator
from operator import attrgetter
from typing import Any

import xxhash
from more_itertools import constrained_batches

from pretrain import storage
from pretrain.config import BUILTIN_PREFIX
from pretrain.data.files import matches
from pretrain.data.images import IMAGE_SUFFIXES
from pretrain.data.readers.base import InputError, Partition, ReadStats, caption_json, decode_utf8, image_sample

CAPTION_FIELDS = ("caption", "text")
BATCH_FILES = 64  # files fetched per request batch
BATCH_BYTES = 64 << 20  # and at most about this many bytes
_NETWORK_ERRORS = (ConnectionError, TimeoutError, PermissionError)


@dataclasses.dataclass(frozen=True)
class Entry:
    url: str
    path: str  # the filesystem's path (what fs.cat takes)
    rel: str  # relative to the source location
    size: int


def is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def stem(rel: str) -> str:
    """``a/b/photo.jpg`` -> ``a/b/photo``: where its caption files are."""
    return rel[: rel.rfind(".")] if "." in posixpath.basename(rel) else rel


def bucket(rel: str, count: int) -> int:
    return xxhash.xxh64_intdigest(rel.encode("utf-8", "surrogatepass")) % count


def listing(location: str) -> list[Entry]:
    """Every file under ``location`` (or ``location`` itself, a file) with its size; hidden ones left out."""
    fs, root = storage.filesystem(location)
    if not fs.exists(root):
        raise InputError(location, None, "not found")
    if fs.isfile(root):
        return [Entry(location, root, posixpath.basename(root), int(fs.size(root)))]
    prefix = root.rstrip("/") + "/"
    out = []
    for path, info in sorted(fs.find(root, detail=True).items()):
        rel = path[len(prefix):] if path.startswith(prefix) else posixpath.basename(path)
        if info.get("type", "file") != "file" or any(p.startswith(".") for p in rel.split("/")):
            continue  # hidden files, our own markers and temporary files
        out.append(Entry(storage.join(location, rel), path, rel, int(info.get("size") or 0)))
    return out


def _selected(src, rel: str) -> bool:
    return is_image(rel) and any(matches(rel, p) for p in src.include) and not any(
        matches(rel, p) for p in src.exclude)


# -- plan ---------------------------------------------------------------------------------------

def plan(src, location: str) -> list[Partition]:
    """``src.partitions`` buckets of the folder's images (a missing folder, or one without images, fails here)."""
    entries = listing(location)
    if not any(_selected(src, e.rel) for e in entries):
        raise InputError(location, None, f"no image files ({' '.join(IMAGE_SUFFIXES)}) match include "
                         f"{src.include} / exclude {src.exclude}")
    name = posixpath.basename(location.rstrip("/")) or "images"
    n = src.partitions
    return [Partition(src.name, location, name, unit="bucket", start=i, end=n) for i in range(n)]


# -- read ---------------------------------------------------------------------------------------

def read(src, part: Partition, stats: ReadStats, images=None) -> Iterator[dict[str, Any]]:
    """The samples of one bucket: every image file is one record (``images``: the recipe's ``ImagesConfig``)."""
    from pretrain.config import ImagesConfig

    cfg = images or ImagesConfig()
    fs = storage.filesystem(part.url)[0]
    entries = listing(part.url)
    by_rel = {e.rel: e for e in entries}
    count, mine = max(part.end, 1), part.start
    todo = [e for e in entries if _selected(src, e.rel) and bucket(e.rel, count) == mine]
    label_field = src.label_field or ("folder" if src.uri == BUILTIN_PREFIX + "shapes" else None)
    for batch in constrained_batches(todo, BATCH_BYTES, BATCH_FILES, get_len=attrgetter("size"),
                                     strict=False):
        sidecars = {}
        for e in batch:
            for suffix in (".txt", ".json"):
                side = by_rel.get(stem(e.rel) + suffix)
                if side is not None and side.size <= src.max_document_bytes:
                    sidecars[(e.rel, suffix)] = side
        wanted = [e.path for e in batch if e.size <= cfg.max_bytes] + [s.path for s in sidecars.values()]
        data = _fetch(fs, wanted)
        for e in batch:
            stats.record()
            if e.size > cfg.max_bytes:
                stats.skip("image_too_large", url=e.url, detail=f"{e.size} bytes > images.max_bytes {cfg.max_bytes}")
                continue
            content = data.get(e.path)
            if isinstance(content, BaseException):
                _raise_if_network(e.url, content)
                stats.skip("no_image", url=e.url, detail=f"unreadable: {type(content).__name__}: {content}")
                continue
            stats.bytes_read += len(content)
            caption, label, meta = _sidecar_fields(src, e, sidecars, data, label_field, stats)
            row = image_sample(src, cfg, stats, content, source_id=e.rel, caption=caption, url=e.url, where=e.url,
                               label=label, meta=meta)
            if row is not None:
                yield row


def _fetch(fs, paths: list[str]) -> dict[str, bytes | BaseException]:
    """The files' bytes (or the error reading each), in one batch: concurrent requests on S3.

    ``cat_ranges``, not ``cat``: ``cat`` expands glob characters, and a file may be called ``[1].jpg``."""
    if not paths:
        return {}
    out = fs.cat_ranges(paths, None, None, on_error="return")
    return dict(zip(paths, out, strict=True))


def _raise_if_network(url: str, err: BaseException) -> None:
    if isinstance(err, _NETWORK_ERRORS):
        raise InputError(url, None, f"{type(err).__name__}: {err}") from err


def _sidecar_fields(src, e: Entry, sidecars: dict, data: dict, label_field: str | None,
                    stats: ReadStats) -> tuple[str, str, dict[str, Any]]:
    """(caption, label, meta) from the image's ``.txt`` and ``.json`` (the ``.txt`` caption wins)."""
    caption, label, meta = "", "", {}
    side = sidecars.get((e.rel, ".json"))
    if side is not None:
        obj = _json(data.get(side.path), stats)
        text = next((obj[k] for k in CAPTION_FIELDS if isinstance(obj.get(k), str)), "")
        caption = text.strip()
        if label_field and label_field != "folder" and obj.get(label_field) is not None:
            label = str(obj[label_field])
        meta = {k: v for k, v in obj.items() if k not in CAPTION_FIELDS and k != label_field}
    side = sidecars.get((e.rel, ".txt"))
    if side is not None:
        raw = data.get(side.path)
        if isinstance(raw, bytes):
            stats.bytes_read += len(raw)
            caption = decode_utf8(raw, stats).strip()
        else:
            stats.repair("unreadable_caption")
    if label_field == "folder":
        label = posixpath.basename(posixpath.dirname(e.rel))
    return caption, label, meta


def _json(raw: Any, stats: ReadStats) -> dict[str, Any]:
    """A caption ``.json`` as an object; anything else (unreadable, invalid, not an object) counts as repaired."""
    if not isinstance(raw, bytes):
        stats.repair("unreadable_caption")
        return {}
    stats.bytes_read += len(raw)
    return caption_json(raw, stats)
