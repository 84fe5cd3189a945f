"""WebDataset: tar shards (``.tar``, or compressed: ``.tar.gz``/``.tgz``, ``.tar.zst``, ...) of samples.

Members are grouped by key, WebDataset's way: the key is the member path up to the first dot of its
file name (``dir/0001.jpg`` and ``dir/0001.txt`` are key ``dir/0001``). A sample takes its image
from a ``jpg``/``jpeg``/``png``/``webp`` member, its caption from ``txt`` (else the ``caption`` or
``text`` field of ``json``, whose other fields go to ``meta``) and, with ``label_field: cls``, its
label from ``cls`` (another ``label_field`` names a ``json`` field).

Each key is one record: a sample, or skipped with a reason (``no_image`` for a key without an image
member; the decoder's reasons otherwise). The shard is read once, as a stream (tarfile ``r|``), so
it is never seeked or held in memory. A shard that is cut short or damaged keeps the samples read
before the damage and counts the file in ``files_skipped`` (``truncated`` / ``corrupt``).
"""

from __future__ import annotations

import dataclasses
import lzma
import posixpath
import tarfile
import zlib
from collections.abc import Iterator
from typing import IO, Any

from pretrain.data.files import list_files
from pretrain.data.readers import streams
from pretrain.data.readers.base import InputError, Partition, ReadStats, caption_json, decode_utf8, image_sample

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
CAPTION_FIELDS = ("caption", "text")
TAIL = 64 << 10  # bytes of the stream kept to check how the archive ended (tarfile reads 10 KiB at a time)
_NETWORK_ERRORS = (ConnectionError, TimeoutError, FileNotFoundError, PermissionError)


def is_shard(name: str) -> bool:
    lower = name.lower()
    return lower.endswith(".tgz") or streams.strip_codec(lower).endswith(".tar")


def split_key(name: str) -> tuple[str, str] | None:
    """``dir/0001.seg.png`` -> (``dir/0001``, ``seg.png``); None for names without an extension or hidden."""
    base = posixpath.basename(name)
    if base.startswith(".") or "." not in base:
        return None
    stem, ext = base.split(".", 1)
    return posixpath.join(posixpath.dirname(name), stem), ext.lower()


# -- plan ---------------------------------------------------------------------------------------

def plan(src, location: str) -> list[Partition]:
    """One partition per shard (a shard is a stream: it does not split)."""
    return [Partition(src.name, url, rel) for url, rel in list_files(location, src.include, src.exclude)
            if is_shard(rel)]


# -- read ---------------------------------------------------------------------------------------

@dataclasses.dataclass
class _Group:
    """The members of one key read so far."""

    key: str
    image: bytes | None = None
    too_large: int = 0  # the size of an image member over images.max_bytes (not read)
    members: dict[str, bytes] = dataclasses.field(default_factory=dict)


class _Tap:
    """A reader that remembers the last ``TAIL`` bytes it passed on, to tell a clean end from a cut."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f, self.pos, self.tail = f, 0, b""

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.pos += len(data)
        self.tail = (self.tail + data)[-TAIL:]
        return data

    def block(self, offset: int) -> bytes | None:
        """The bytes at ``offset`` up to 512 (fewer where the stream ended); None if no longer held."""
        start = self.pos - len(self.tail)
        if offset < start:
            return None
        return self.tail[offset - start: offset - start + tarfile.BLOCKSIZE]


def read(src, part: Partition, stats: ReadStats, images=None) -> Iterator[dict[str, Any]]:
    """The samples of one shard, one record per key (``images``: the recipe's ``ImagesConfig``)."""
    from pretrain.config import ImagesConfig

    cfg = images or ImagesConfig()
    if streams.size(part.url) == 0:
        stats.skip_file("empty", url=part.url, offset=0)
        return
    kind = "gzip" if part.url.lower().endswith(".tgz") else streams.codec(part.url)
    damaged = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError, *_zstd_errors(kind))
    with streams.open_raw(part.url) as raw:
        tap = _Tap(streams.decompress(raw, kind))
        groups = _groups(src, cfg, part, tap, stats)
        while True:
            try:
                group = next(groups)
            except StopIteration:
                return
            except damaged as err:  # only the tar stream's own errors: samples are made outside this try
                if isinstance(err, _NETWORK_ERRORS):
                    raise InputError(part.url, tap.pos, f"{type(err).__name__}: {err}") from err
                cut = isinstance(err, EOFError) or "unexpected end" in str(err) or "truncated" in str(err)
                stats.skip_file("truncated" if cut else "corrupt", url=part.url, offset=tap.pos,
                                detail=f"{type(err).__name__}: {err} (offset in the uncompressed tar); the keys "
                                "before it are kept, the one it was reading is lost")
                return
            if (row := _sample(src, cfg, part, group, stats)) is not None:
                yield row


def _groups(src, cfg, part: Partition, tap: _Tap, stats: ReadStats) -> Iterator[_Group]:
    """The shard's keys with their members, in stream order; a key ends where the next one starts."""
    tar = tarfile.open(fileobj=tap, mode="r|")  # type: ignore[call-overload]  # noqa: SIM115 (the stream is the caller's)
    group: _Group | None = None
    for member in tar:
        named = split_key(member.name) if member.isfile() else None
        if named is None:
            continue
        key, ext = named
        if group is not None and key != group.key:
            yield group
            group = None
        group = group or _Group(key)
        _add(src, cfg, tar, member, ext, group, stats)
    if group is not None:
        yield group
    if (ending := _ending(tap, tar.offset)) is not None:
        stats.skip_file(ending, url=part.url, offset=tar.offset,
                        detail="no end-of-archive marker here (offset in the uncompressed tar)")


def _zstd_errors(kind: str | None) -> tuple[type[BaseException], ...]:
    if kind != "zstd":
        return ()
    import zstandard

    return (zstandard.ZstdError,)


def _ending(tap: _Tap, offset: int) -> str | None:
    """None when the archive ended with its zero block; else ``truncated`` (cut) or ``corrupt`` (garbage).

    tarfile's stream mode stops silently at a cut or invalid header after the first one."""
    block = tap.block(offset)
    if block is None:
        return None  # cannot tell: not held any more (tarfile read far past its end)
    if len(block) < tarfile.BLOCKSIZE:
        return "truncated"
    return None if block.count(0) == tarfile.BLOCKSIZE else "corrupt"


def _add(src, cfg, tar: tarfile.TarFile, member: tarfile.TarInfo, ext: str, group: _Group,
         stats: ReadStats) -> None:
    """Read one member into its group (only the members a sample uses are read; the rest are streamed past)."""
    if ext in IMAGE_EXTENSIONS:
        if group.image is not None or group.too_large:
            return  # one image per sample: the first
        if member.size > cfg.max_bytes:
            group.too_large = member.size
            return
        group.image = _read(tar, member, stats)
    elif ext in ("txt", "json", "cls"):
        if member.size > src.max_document_bytes:
            stats.repair(f"{ext}_too_large")
            return
        group.members[ext] = _read(tar, member, stats)


def _read(tar: tarfile.TarFile, member: tarfile.TarInfo, stats: ReadStats) -> bytes:
    f = tar.extractfile(member)
    data = f.read() if f is not None else b""
    stats.bytes_read += len(data)
    return data


def _sample(src, cfg, part: Partition, group: _Group, stats: ReadStats) -> dict[str, Any] | None:
    """One key as a sample row, or None (counted: no image, too large, or the decoder's reason)."""
    stats.record()
    source_id = f"{part.rel}/{group.key}"
    if group.image is None:
        if group.too_large:
            stats.skip("image_too_large", url=part.url, detail=f"{source_id}: {group.too_large} bytes > "
                       f"images.max_bytes {cfg.max_bytes}")
        else:
            stats.skip("no_image", url=part.url, detail=f"{source_id}: members "
                       + (", ".join(sorted(group.members)) or "of other kinds only"))
        return None
    obj = _json(group.members.get("json"), stats)
    caption = next((obj[k] for k in CAPTION_FIELDS if isinstance(obj.get(k), str)), "")
    if "txt" in group.members:
        caption = decode_utf8(group.members["txt"], stats)
    label = ""
    if src.label_field == "cls" and "cls" in group.members:
        label = decode_utf8(group.members["cls"], stats).strip()
    elif src.label_field and obj.get(src.label_field) is not None:
        label = str(obj[src.label_field])
    meta = {"key": group.key, **{k: v for k, v in obj.items() if k not in CAPTION_FIELDS and k != src.label_field}}
    return image_sample(src, cfg, stats, group.image, source_id=source_id, caption=caption.strip(), url=part.url,
                        where=part.url, label=label, meta=meta)


def _json(raw: bytes | None, stats: ReadStats) -> dict[str, Any]:
    return {} if raw is None else caption_json(raw, stats)
