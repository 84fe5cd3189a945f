"""What every reader shares: the partition it reads, the stats it keeps, and the document row it yields.

A reader is a module with two functions:

- ``plan(src, location) -> list[Partition]``: list the source and split it into partitions (whole
  files, or ranges within a file at record boundaries, or buckets of a repository).
- ``read(src, part, stats) -> Iterator[dict]``: stream the partition's documents as rows made with
  :func:`document`, counting every record it does not turn into a document in ``stats``.

The ledger every reader keeps: ``stats.records == documents written + sum(stats.skipped.values())``.
A record is anything that could have become a document (a WARC response, a wiki page, a file, a
JSONL line, a table row). Whole-file problems (empty, unreadable) go to ``stats.files_skipped``.
Image sources yield sample rows (:func:`sample`, :func:`image_sample`) instead: there a record is
an image file, a WebDataset key, or a table row.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import re
from typing import Any

import orjson
import xxhash

MAX_ERROR_SAMPLES = 20
_SURROGATE = re.compile("[\ud800-\udfff]")


class InputError(RuntimeError):
    """An input that cannot be read at all; the message names the file and the byte offset."""

    def __init__(self, url: str, offset: int | None, reason: str) -> None:
        where = f"{url}" + (f" at byte {offset}" if offset is not None else "")
        super().__init__(f"{where}: {reason}")
        self.url, self.offset, self.reason = url, offset, reason


@dataclasses.dataclass(frozen=True)
class Partition:
    """One unit of ingest work: a whole file, a range within it, or a bucket of a repository's files.

    ``rel`` (the path relative to the source URI) plus the range is the partition's identity, so
    adding a file adds partitions and leaves the others, and their output shards, as they were.
    ``unit`` says what ``start``/``end`` count: ``file`` (whole file), ``bytes`` (a byte range whose
    records *start* inside [start, end)), ``row_groups`` (Parquet), ``bucket`` (code: files whose path
    hashes to bucket ``start`` of ``end``), ``rows`` (a table's row range).
    """

    source: str
    url: str
    rel: str
    unit: str = "file"
    start: int = 0
    end: int = -1  # exclusive; -1: to the end
    limit: int = 0  # at most this many documents (a share of the source's max_documents); 0: all

    @property
    def key(self) -> str:
        return self.rel if self.unit == "file" else f"{self.rel}@{self.unit}:{self.start}-{self.end}"

    @property
    def shard_name(self) -> str:
        return "part-" + hashlib.sha1(self.key.encode("utf-8", "surrogatepass")).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Partition:
        fields = {f.name for f in dataclasses.fields(cls)}
        clean = {k: v for k, v in data.items() if k in fields}
        for k in ("start", "end", "limit"):  # dsl.Collected / JSON may turn ints into floats
            if k in clean:
                clean[k] = int(clean[k])
        return cls(**clean)


@dataclasses.dataclass
class ReadStats:
    """Counts of one partition's read, merged across partitions by adding up."""

    records: int = 0
    bytes_read: int = 0
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    skipped_types: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    repaired: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    files_skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    errors: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def record(self, n: int = 1) -> None:
        self.records += n

    def skip(self, reason: str, *, url: str | None = None, offset: int | None = None, detail: str = "",
             content_type: str | None = None) -> None:
        """Count one record that is not a document; keep a sample of where and why for the report."""
        self.skipped[reason] += 1
        if content_type is not None:
            self.skipped_types[content_type or "unknown"] += 1
        self._sample(reason, url, offset, detail)

    def skip_file(self, reason: str, *, url: str, offset: int | None = None, detail: str = "") -> None:
        self.files_skipped[reason] += 1
        self._sample(reason, url, offset, detail)

    def repair(self, what: str) -> None:
        self.repaired[what] += 1

    def _sample(self, reason: str, url: str | None, offset: int | None, detail: str) -> None:
        if url is not None and len(self.errors) < MAX_ERROR_SAMPLES:
            self.errors.append({"reason": reason, "url": url, "offset": offset, "detail": detail[:300]})

    def to_dict(self) -> dict[str, Any]:
        return {"records": self.records, "bytes_read": self.bytes_read, "skipped": dict(self.skipped),
                "skipped_types": dict(self.skipped_types), "repaired": dict(self.repaired),
                "files_skipped": dict(self.files_skipped)}


def document_id(source: str, source_id: str, text: str) -> str:
    """Stable across re-runs and distinct for distinct records: exact copies stay separate documents.

    xxh3-128 (not a cryptographic hash: ids need uniqueness, and this runs once per document).
    """
    h = xxhash.xxh3_128()
    for part in (source, source_id, text):
        h.update(part.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()


def _meta_json(meta: dict[str, Any] | None) -> str:
    if not meta:
        return "{}"
    try:
        return orjson.dumps(meta, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:  # lone surrogates, non-string keys: the slower, more forgiving encoder
        return json.dumps(meta, ensure_ascii=False, sort_keys=True, default=str)


def document(src, *, source_id: str, text: str, url: str = "", date: str = "", license: str | None = None,
             meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """One row of the documents schema (see ``pretrain.data.documents``)."""
    return {
        "id": document_id(src.name, source_id, text), "text": text, "source": src.name, "source_id": source_id,
        "url": url, "date": date, "license": src.license if license is None else license,
        "meta": _meta_json(meta),
    }


def sample(src, *, source_id: str, caption: str, decoded, url: str = "", date: str = "", label: str = "",
           license: str | None = None, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """One row of the samples schema (``pretrain.data.documents.SAMPLE_SCHEMA``) from a decoded image
    (``pretrain.data.images.Decoded``); the id comes from the source, ``source_id`` and the image hash."""
    return {
        "id": document_id(src.name, source_id, decoded.image_hash), "text": caption, "source": src.name,
        "source_id": source_id, "url": url, "date": date, "license": src.license if license is None else license,
        "meta": _meta_json(meta), "image": decoded.image, "width": decoded.width, "height": decoded.height,
        "label": label, "image_hash": decoded.image_hash, "phash": decoded.phash,
    }


def image_sample(src, images, stats: ReadStats, data: bytes, *, source_id: str, caption: str, url: str,
                 where: str, offset: int | None = None, **fields: Any) -> dict[str, Any] | None:
    """Decode ``data`` into a sample row, or count the record as skipped with the decoder's reason (None).

    ``images`` is the recipe's ``ImagesConfig``; ``where`` the file the error samples name; ``fields`` go
    to :func:`sample` (date, label, license, meta). The caller has counted the record and its bytes.
    """
    from pretrain.data.images import ImageSkip, decode

    try:
        decoded = decode(data, images)
    except ImageSkip as skip:
        stats.skip(skip.reason, url=where, offset=offset, detail=f"{source_id}: {skip.detail}")
        return None
    return sample(src, source_id=source_id, caption=caption, decoded=decoded, url=url, **fields)


def decode_utf8(data: bytes, stats: ReadStats) -> str:
    """UTF-8 text; invalid bytes become U+FFFD (counted as repaired), never a whole re-decode."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        stats.repair("invalid_utf8")
        return data.decode("utf-8", errors="replace")


def scrub_surrogates(text: str, stats: ReadStats) -> str:
    """Lone surrogates (from JSON escapes such as \\ud800) cannot be written as UTF-8: replace them."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        stats.repair("lone_surrogate")
        return _SURROGATE.sub("\ufffd", text)


def caption_json(raw: bytes, stats: ReadStats) -> dict[str, Any]:
    """A sample's caption ``.json`` as an object; invalid JSON or a non-object counts as repaired (an empty one)."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        obj = None
    if not isinstance(obj, dict):
        stats.repair("invalid_caption_json")
        return {}
    return obj
