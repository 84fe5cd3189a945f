"""Tables: JSON Lines, Parquet and Hugging Face ``datasets`` folders, one row or line per document.

Which fields hold the text, id, url, date and extra ``meta`` is the source's choice (``src.text_field``
and friends). JSONL is read as binary lines parsed by ``orjson`` (the standard library only for lines
orjson refuses: invalid UTF-8, lone surrogates), so a bad line costs one record, never the file.
Parquet and Arrow are read in record batches of the projected columns only. Large uncompressed
JSONL files split into byte ranges, Parquet files into row-group ranges, so one big file fans out.

With ``src.image_field`` set, rows become image samples (``base.sample``): the field holds the image's
bytes, a dict with ``bytes`` or ``path`` (``datasets``' Image feature), or a path (relative to the
table file's folder, absolute, or an s3:// URL); ``text_field`` is the caption (missing: ""), and
``label_field`` the class label. A row without a readable image is skipped as ``no_image``.
"""

from __future__ import annotations

import email.utils
import functools
import io
import json
import lzma
import os
import posixpath
import re
import zlib
from collections.abc import Iterable, Iterator
from datetime import date, datetime, timezone
from typing import IO, Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from pretrain import storage
from pretrain.data.files import list_files
from pretrain.data.readers import streams
from pretrain.data.readers.base import InputError, Partition, ReadStats, document, image_sample, scrub_surrogates

READ_BUFFER = 1 << 20  # bytes buffered per JSONL read call
DISCARD_CHUNK = 1 << 16  # an over-long line is read past in pieces of this size
LINE_SLACK = 1 << 16  # room for the other fields of a line beside its text
BATCH_BYTES = 32 << 20  # about this much column data per Parquet batch
BOM = b"\xef\xbb\xbf"
HF_MARKERS = ("dataset_dict.json", "state.json", "dataset_info.json")
DATA_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".parquet": "parquet",
                 ".csv": "csv", ".tsv": "csv", ".arrow": "arrow"}
# Already in the form iso_date() writes (UTC as Z, or no zone): kept as is, unparsed.
_CANONICAL = re.compile(r"\d{4}-\d\d-\d\d(?:T\d\d:\d\d(?::\d\d(?:\.\d{1,6})?)?Z?)?")
_NETWORK_ERRORS = (ConnectionError, TimeoutError, FileNotFoundError, PermissionError)


# -- plan ---------------------------------------------------------------------------------------

def plan(src, location: str) -> list[Partition]:
    """Partitions of a table source: byte ranges of big JSONL files, row-group ranges, Arrow files."""
    if src.format == "hf":
        return _plan_hf(src, location)
    files = list_files(location, src.include, src.exclude)
    if src.image_field:  # the images a table points to often sit beside it: they are not tables
        from pretrain.data.images import IMAGE_SUFFIXES

        files = [(url, rel) for url, rel in files if not rel.lower().endswith(IMAGE_SUFFIXES)]
    if src.format == "parquet":
        return [p for url, rel in files for p in _plan_parquet(src, url, rel)]
    return [p for url, rel in files for p in _plan_jsonl(src, url, rel)]


def _plan_jsonl(src, url: str, rel: str) -> list[Partition]:
    """Uncompressed files larger than ``partition_bytes`` split into byte ranges (lines starting inside)."""
    if streams.codec(url) is not None:
        return [Partition(src.name, url, rel)]
    size = streams.size(url)
    if size <= src.partition_bytes:
        return [Partition(src.name, url, rel)]
    return [Partition(src.name, url, rel, "bytes", start, min(start + src.partition_bytes, size))
            for start in range(0, size, src.partition_bytes)]


def _plan_parquet(src, url: str, rel: str) -> list[Partition]:
    """Consecutive row groups of about ``partition_bytes`` (compressed) per partition."""
    import pyarrow.parquet as pq

    try:
        with streams.open_raw(url) as f:
            meta = pq.ParquetFile(f).metadata
    except (pa.ArrowException, OSError) as err:
        if isinstance(err, _NETWORK_ERRORS):
            raise
        return [Partition(src.name, url, rel)]  # read() reports what is wrong with it
    ranges, start, acc = [], 0, 0
    for i in range(meta.num_row_groups):
        acc += _compressed_size(meta.row_group(i))
        if acc >= src.partition_bytes and i + 1 < meta.num_row_groups:
            ranges.append((start, i + 1))
            start, acc = i + 1, 0
    if not ranges:
        return [Partition(src.name, url, rel)]
    ranges.append((start, meta.num_row_groups))
    return [Partition(src.name, url, rel, "row_groups", s, e) for s, e in ranges]


def _compressed_size(rg: Any) -> int:
    """A row group's bytes as stored (the sum of its column chunks)."""
    return sum(rg.column(j).total_compressed_size for j in range(rg.num_columns))


def _plan_hf(src, location: str) -> list[Partition]:
    """A ``save_to_disk`` folder (Dataset or DatasetDict: one partition per Arrow file), else data files."""
    fs, root = storage.filesystem(location)
    if fs.isfile(root):
        return [Partition(src.name, location, posixpath.basename(root))]
    prefix = ""
    if fs.isfile(posixpath.join(root, "dataset_dict.json")):
        splits = json.loads(storage.read_bytes(storage.join(location, "dataset_dict.json"))).get("splits", [])
        if src.split not in splits:
            raise InputError(location, None, f"DatasetDict has no split {src.split!r}; it has {', '.join(splits)}")
        prefix = src.split + "/"
    state_url = storage.join(location, prefix + "state.json")
    if storage.exists(state_url):
        names = [f["filename"] for f in json.loads(storage.read_bytes(state_url)).get("_data_files", [])]
        return [Partition(src.name, storage.join(location, prefix + n), prefix + n) for n in names]
    return [Partition(src.name, url, rel) for url, rel in list_files(location, src.include, src.exclude)
            if _data_kind(rel) is not None]


def _data_kind(name: str) -> str | None:
    """What a data file holds, by its suffix (compression suffix aside)."""
    base = streams.strip_codec(name).lower()
    return next((kind for suffix, kind in DATA_SUFFIXES.items() if base.endswith(suffix)), None)


# -- read ---------------------------------------------------------------------------------------

def read(src, part: Partition, stats: ReadStats, images=None) -> Iterator[dict[str, Any]]:
    """The partition's documents, by the source's format (and for ``hf`` data files, by suffix).

    With ``src.image_field``: sample rows, made as ``images`` (the recipe's ``ImagesConfig``) says."""
    if src.image_field and images is None:
        from pretrain.config import ImagesConfig

        images = ImagesConfig()
    if not src.image_field:
        images = None
    kind = src.format if src.format != "hf" else (_data_kind(part.rel) or "arrow")
    if kind == "jsonl":
        yield from read_jsonl(src, part, stats, images)
    elif kind == "parquet":
        yield from read_parquet(src, part, stats, images)
    elif kind == "csv":
        yield from read_csv(src, part, stats, images)
    else:
        yield from read_arrow(src, part, stats, images)


# -- JSON Lines ---------------------------------------------------------------------------------

def _codec_errors(kind: str | None) -> tuple[type[BaseException], ...]:
    """The exceptions a damaged compressed stream raises (never a network error)."""
    if kind is None:
        return ()
    errors: list[type[BaseException]] = [EOFError, zlib.error, lzma.LZMAError, OSError]
    if kind == "zstd":
        import zstandard

        errors.append(zstandard.ZstdError)
    return tuple(errors)


def read_jsonl(src, part: Partition, stats: ReadStats, images=None) -> Iterator[dict[str, Any]]:
    """Every line that starts inside the partition's range, parsed; bad lines are counted and skipped."""
    kind = streams.codec(part.url)
    ranged = part.unit == "bytes" and kind is None
    start = part.start if ranged else 0
    end = part.end if ranged and part.end >= 0 else None
    line_limit = 3 * src.max_document_bytes + LINE_SLACK  # a \uXXXX-escaped text may take 3x its UTF-8 size
    damaged = _codec_errors(kind)
    with streams.open_raw(part.url, max(start - 1, 0)) as raw, _line_reader(raw, kind) as f:
        pos, lineno = start, 0
        try:
            if start > 0:  # the line that starts before the range belongs to the previous partition
                pos = start - 1 + _discard_line(f, b"")
            elif not f.peek(1):
                stats.skip_file("empty", url=part.url, offset=0)
                return
            while end is None or pos < end:
                line = f.readline(line_limit)
                if not line:
                    break
                offset, pos, lineno = pos, pos + len(line), lineno + 1
                stats.bytes_read += len(line)
                if len(line) == line_limit and not line.endswith(b"\n"):
                    rest = _discard_line(f, line) - len(line)
                    pos += rest
                    stats.bytes_read += rest
                    stats.record()
                    stats.skip("too_large", url=part.url, offset=offset,
                               detail=f"line {offset=} longer than {line_limit} bytes")
                    continue
                label = f"{part.rel}:@{offset}" if ranged else f"{part.rel}:{lineno}"
                row = _jsonl_row(src, part, line, offset, label, stats, images)
                if row is not None:
                    yield row
        except damaged as err:
            if isinstance(err, _NETWORK_ERRORS):
                raise
            reason = "truncated" if isinstance(err, EOFError) else "corrupt"
            stats.skip_file(reason, url=part.url, offset=pos,
                            detail=f"{type(err).__name__}: {err} (offset in the decompressed stream)")
        except OSError as err:
            raise InputError(part.url, pos, f"{type(err).__name__}: {err}") from err


def _line_reader(raw: IO[bytes], kind: str | None) -> IO[bytes]:
    """A reader with a C ``readline``. gzip, bz2 and xz readers have one over small reads, so a cut
    stream loses only its last partial line; a large buffer over them would lose the whole buffer."""
    if kind is None:
        return io.BufferedReader(raw, READ_BUFFER)  # type: ignore[arg-type]
    stream = streams.decompress(raw, kind)
    return stream if hasattr(stream, "peek") else io.BufferedReader(stream, DISCARD_CHUNK)  # type: ignore


def _discard_line(f: IO[bytes], head: bytes) -> int:
    """Read past the rest of a line in small pieces; returns the bytes read (``head`` included)."""
    n = len(head)
    while not head.endswith(b"\n"):
        head = f.readline(DISCARD_CHUNK)
        if not head:
            break
        n += len(head)
    return n


def _jsonl_row(src, part: Partition, line: bytes, offset: int, label: str,
               stats: ReadStats, images=None) -> dict[str, Any] | None:
    """One line as a document row, or None when it is counted as skipped (blank lines are no record)."""
    if offset == 0 and line.startswith(BOM):
        line = line[len(BOM):]
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        if not line.strip():
            return None
        obj = _loads_slow(src, part, line, offset, stats)
        if obj is _INVALID:
            return None
    stats.record()
    if not isinstance(obj, dict):
        stats.skip("not_object", url=part.url, offset=offset, detail=f"a JSON {type(obj).__name__}")
        return None
    if images is not None:
        return _sample_row(src, part, images, stats, image=obj.get(src.image_field), caption=obj.get(src.text_field),
                           label=obj.get(src.label_field) if src.label_field else None,
                           ident=obj.get(src.id_field) if src.id_field else None,
                           url=obj.get(src.url_field) if src.url_field else None,
                           date=obj.get(src.date_field) if src.date_field else None,
                           meta={k: obj[k] for k in src.meta_fields if k in obj}, where=label, offset=offset)
    return _row(src, part, obj, label, offset, stats)


_INVALID = object()


def _loads_slow(src, part: Partition, line: bytes, offset: int, stats: ReadStats) -> Any:
    """The standard library's parser on the repaired text: invalid UTF-8 replaced, lone surrogates scrubbed."""
    try:
        text, repaired = line.decode("utf-8"), False
    except UnicodeDecodeError:
        text, repaired = line.decode("utf-8", errors="replace"), True
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as err:
        stats.record()
        stats.skip("invalid_json", url=part.url, offset=offset, detail=f"{err}: {text[:80]!r}")
        return _INVALID
    if repaired:
        stats.repair("invalid_utf8")
    return _scrub(obj, stats)


def _scrub(obj: Any, stats: ReadStats) -> Any:
    """Lone surrogates out of every string of a parsed value (keys included)."""
    if isinstance(obj, str):
        return scrub_surrogates(obj, stats)
    if isinstance(obj, list):
        return [_scrub(v, stats) for v in obj]
    if isinstance(obj, dict):
        return {_scrub(k, stats): _scrub(v, stats) for k, v in obj.items()}
    return obj


# -- rows ---------------------------------------------------------------------------------------

def _row(src, part: Partition, obj: dict[str, Any], label: str, offset: int | None,
         stats: ReadStats) -> dict[str, Any] | None:
    """A parsed JSON object as a document row, or None when it has no usable text."""
    text = obj.get(src.text_field)
    if not isinstance(text, str):
        stats.skip("no_text", url=part.url, offset=offset, detail=f"field {src.text_field!r} is "
                   + ("missing" if text is None else type(text).__name__))
        return None
    if not text or text.isspace():
        stats.skip("empty", url=part.url, offset=offset)
        return None
    if _too_large(text, src.max_document_bytes):
        stats.skip("too_large", url=part.url, offset=offset, detail=f"text of {len(text)} characters")
        return None
    ident = obj.get(src.id_field) if src.id_field else None
    url = obj.get(src.url_field) if src.url_field else None
    return document(
        src, source_id=label if ident is None else _str(ident), text=text, url=_str(url) if url else part.url,
        date=iso_date(obj.get(src.date_field)) if src.date_field else "",
        meta={k: _jsonable(obj[k]) for k in src.meta_fields if k in obj})


def _too_large(text: str, limit: int) -> bool:
    """UTF-8 size over ``limit``, encoding only texts that might be (a character takes 1 to 4 bytes)."""
    if len(text) * 4 <= limit:
        return False
    return len(text) > limit or len(text.encode("utf-8", "surrogatepass")) > limit


def _str(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


def _jsonable(value: Any) -> Any:
    """A value ``json.dumps`` can write: dates as ISO 8601, bytes as text, other types as strings."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, date):
        return iso_date(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return str(value)


def iso_date(value: Any) -> str:
    """ISO 8601 for datetimes, dates, Unix timestamps and parseable strings; other strings as given."""
    if isinstance(value, str):
        return value if _CANONICAL.fullmatch(value) else _iso_string(value)
    if value is None:
        return ""
    if isinstance(value, datetime):
        return _iso_datetime(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _iso_timestamp(value)
    return str(value)


def _iso_datetime(value: datetime) -> str:
    if value.tzinfo is None:
        return value.isoformat()
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _iso_timestamp(value: float) -> str:
    """Seconds, milliseconds, microseconds or nanoseconds since 1970, told by magnitude."""
    scaled = float(value)
    while abs(scaled) >= 1e11:
        scaled /= 1000
    try:
        return _iso_datetime(datetime.fromtimestamp(scaled, tz=timezone.utc))
    except (OverflowError, OSError, ValueError):
        return str(value)


@functools.lru_cache(maxsize=4096)
def _iso_string(value: str) -> str:
    """Dates repeat in a table: parse each distinct string once."""
    text = value.strip()
    if not text:
        return ""
    try:
        if len(text) == 10:
            return date.fromisoformat(text).isoformat()
        return _iso_datetime(datetime.fromisoformat(text))
    except ValueError:
        pass
    try:
        return _iso_datetime(email.utils.parsedate_to_datetime(text))
    except (TypeError, ValueError, IndexError):
        return value


# -- Arrow tables: Parquet, Arrow IPC, CSV -----------------------------------------------------

def _columns(src) -> list[str]:
    """The fields a table read needs: nothing else is decoded."""
    names = [src.text_field, src.id_field, src.url_field, src.date_field, *src.meta_fields]
    if src.image_field:
        names += [src.image_field, src.label_field]
    return list(dict.fromkeys(n for n in names if n))


def _batch_rows(src, part: Partition, batch: pa.RecordBatch, first_row: int,
                stats: ReadStats, images=None) -> Iterator[dict[str, Any]]:
    """Rows of one record batch; the columns are converted to Python lists once per batch."""
    if images is not None:
        yield from _batch_samples(src, part, batch, first_row, stats, images)
        return
    n = batch.num_rows
    names = set(batch.schema.names)
    texts, sizes = _text_column(batch, src.text_field, stats) if src.text_field in names else ([None] * n, None)
    ids = _values(batch, src.id_field, names)
    urls = _values(batch, src.url_field, names)
    dates = _values(batch, src.date_field, names)
    metas = {f: _values(batch, f, names) for f in src.meta_fields if f in names}
    limit = src.max_document_bytes
    for i in range(n):
        stats.record()
        row = first_row + i
        text = texts[i]
        if not isinstance(text, str):
            stats.skip("no_text", url=part.url, detail=f"row {row}: field {src.text_field!r} is "
                       + ("missing" if src.text_field not in names else "null"))
            continue
        if not text or text.isspace():
            stats.skip("empty", url=part.url, detail=f"row {row}")
            continue
        if sizes[i] > limit:
            stats.skip("too_large", url=part.url, detail=f"row {row}: text of {sizes[i]} bytes")
            continue
        ident = ids[i] if ids else None
        url = urls[i] if urls else None
        yield document(
            src, source_id=f"{part.rel}:{row}" if ident is None else _str(ident), text=text,
            url=_str(url) if url else part.url, date=iso_date(dates[i]) if dates else "",
            meta={k: _jsonable(v[i]) for k, v in metas.items() if v[i] is not None})


def _batch_samples(src, part: Partition, batch: pa.RecordBatch, first_row: int, stats: ReadStats,
                   images) -> Iterator[dict[str, Any]]:
    """Sample rows of one record batch: one record per row."""
    n = batch.num_rows
    names = set(batch.schema.names)
    texts = _text_column(batch, src.text_field, stats)[0] if src.text_field in names else [None] * n
    cols = {f: _values(batch, getattr(src, f + "_field"), names) or [None] * n
            for f in ("image", "label", "id", "url", "date")}
    metas = {f: _values(batch, f, names) for f in src.meta_fields if f in names}
    for i in range(n):
        stats.record()
        row = first_row + i
        sample = _sample_row(src, part, images, stats, image=cols["image"][i], caption=texts[i],
                             label=cols["label"][i], ident=cols["id"][i], url=cols["url"][i], date=cols["date"][i],
                             meta={k: v[i] for k, v in metas.items() if v[i] is not None}, where=f"{part.rel}:{row}")
        if sample is not None:
            yield sample


def _sample_row(src, part: Partition, images, stats: ReadStats, *, image: Any, caption: Any, label: Any, ident: Any,
                url: Any, date: Any, meta: dict[str, Any], where: str,
                offset: int | None = None) -> dict[str, Any] | None:
    """A row's image decoded into a sample, or None (counted: ``no_image`` or the decoder's reason).

    The caller has counted the record."""
    data, image_url, problem = _image_bytes(image, part.url, images.max_bytes)
    if data is None:
        stats.skip("no_image", url=part.url, offset=offset, detail=f"{where}: {problem}")
        return None
    if image_url:
        stats.bytes_read += len(data)
    return image_sample(
        src, images, stats, data, source_id=where if ident is None else _str(ident),
        caption=caption.strip() if isinstance(caption, str) else "", url=_str(url) if url else (image_url or part.url),
        where=part.url, offset=offset, label="" if label is None else _str(label),
        date=iso_date(date) if date is not None else "", meta={k: _jsonable(v) for k, v in meta.items()})


def _image_bytes(value: Any, table_url: str, max_bytes: int) -> tuple[bytes | None, str, str]:
    """(the image's bytes, the URL they came from or "", what is wrong when there are none).

    A path is read up to ``max_bytes + 1`` bytes: enough for the decoder to refuse it as too large."""
    if isinstance(value, dict):  # datasets' Image feature: {"bytes": ..., "path": ...}
        value = value.get("bytes") or value.get("path")
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value), "", ""  # zero bytes: the decoder counts it (empty_image)
    if not isinstance(value, str) or not value.strip():
        return None, "", f"field {'missing' if value is None else type(value).__name__}"
    url = value if storage.is_remote(value) or posixpath.isabs(value) else storage.join(_folder(table_url), value)
    fs, path = storage.filesystem(url)
    try:
        with fs.open(path, "rb") as f:
            return f.read(max_bytes + 1), url, ""
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None, url, f"{value}: file not found"
    except OSError as err:
        if isinstance(err, _NETWORK_ERRORS):
            raise InputError(url, None, f"{type(err).__name__}: {err}") from err
        return None, url, f"{value}: {type(err).__name__}: {err}"


def _folder(url: str) -> str:
    return url.rsplit("/", 1)[0] if storage.is_remote(url) else os.path.dirname(url)


def _text_column(batch: pa.RecordBatch, field: str, stats: ReadStats) -> tuple[list[Any], list[int]]:
    """The text column as Python strings and their UTF-8 sizes (binary columns decoded with repair)."""
    col = batch.column(field)
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    if pa.types.is_string_view(col.type):
        col = col.cast(pa.large_string())
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)
            or pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type)):
        return [None] * len(col), [0] * len(col)
    sizes = pc.binary_length(col).fill_null(0).to_pylist()
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        try:
            return col.to_pylist(), sizes
        except (UnicodeDecodeError, pa.ArrowException):  # a string column holding invalid UTF-8
            col = col.cast(pa.large_binary(), safe=False)
    return [_decode(v, stats) for v in col.to_pylist()], sizes


def _decode(data: bytes | None, stats: ReadStats) -> str | None:
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        stats.repair("invalid_utf8")
        return data.decode("utf-8", errors="replace")


def _values(batch: pa.RecordBatch, field: str | None, names: set[str]) -> list[Any] | None:
    if not field or field not in names:
        return None
    return batch.column(field).to_pylist()


def _corrupt(err: BaseException) -> bool:
    """An error that says the file's bytes are bad (not that the network or the disk failed)."""
    return isinstance(err, pa.ArrowException | OSError | ValueError) and not isinstance(err, _NETWORK_ERRORS)


def read_parquet(src, part: Partition, stats: ReadStats, images=None) -> Iterator[dict[str, Any]]:
    """Row groups of the partition, streamed in batches of the projected columns."""
    import pyarrow.parquet as pq

    url = part.url
    local = not storage.is_remote(url)
    source: Any = storage.filesystem(url)[1] if local else streams.open_raw(url)  # open_raw: InputError if absent
    try:
        try:
            if streams.size(url) == 0:
                stats.skip_file("empty", url=url, offset=0)
                return
            pf = pq.ParquetFile(source, memory_map=local)
        except FileNotFoundError:
            raise InputError(url, None, "file not found") from None
        except Exception as err:
            if not _corrupt(err):
                raise
            stats.skip_file("corrupt", url=url, offset=None, detail=f"not a readable Parquet file: {err}")
            return
        yield from _parquet_rows(src, part, pf, stats, images)
    finally:
        if not local:
            source.close()


def _parquet_rows(src, part: Partition, pf: Any, stats: ReadStats, images=None) -> Iterator[dict[str, Any]]:
    meta = pf.metadata
    groups = range(meta.num_row_groups)
    if part.unit == "row_groups":
        groups = range(part.start, meta.num_row_groups if part.end < 0 else min(part.end, meta.num_row_groups))
    first_row = sum(meta.row_group(i).num_rows for i in range(groups.start))
    names = set(pf.schema_arrow.names)
    columns = [c for c in _columns(src) if c in names]
    needed = src.image_field if images is not None else src.text_field
    for g in groups:
        rg = meta.row_group(g)
        stats.bytes_read += _compressed_size(rg)
        if needed not in names:  # nothing to decode: every row lacks the text (the image)
            yield from _batch_rows(src, part, pa.record_batch({"_": pa.nulls(rg.num_rows)}), first_row, stats, images)
            first_row += rg.num_rows
            continue
        rows_per_batch = max(1, min(8192, BATCH_BYTES * max(rg.num_rows, 1) // max(rg.total_byte_size, 1)))
        try:
            for batch in pf.iter_batches(batch_size=rows_per_batch, row_groups=[g], columns=columns,
                                         use_threads=False):
                yield from _batch_rows(src, part, batch, first_row, stats, images)
                first_row += batch.num_rows
        except Exception as err:
            if not _corrupt(err):
                raise
            offset = rg.column(0).file_offset if rg.num_columns else None
            stats.skip_file("corrupt", url=part.url, offset=offset, detail=f"row group {g}: {err}")
            return


def read_arrow(src, part: Partition, stats: ReadStats, images=None) -> Iterator[dict[str, Any]]:
    """An Arrow file of a ``save_to_disk`` folder: memory-mapped locally, streamed from S3, batch by batch."""
    url = part.url
    local = not storage.is_remote(url)
    if local and not storage.exists(url):
        raise InputError(url, None, "file not found")
    source: Any = pa.memory_map(storage.filesystem(url)[1]) if local else streams.open_raw(url)
    try:
        try:
            reader = _open_ipc(source)
        except Exception as err:
            if not _corrupt(err):
                raise
            stats.skip_file("corrupt", url=url, detail=f"not a readable Arrow file: {err}")
            return
        yield from _arrow_rows(src, part, reader, stats, images)
    finally:
        source.close()


def _open_ipc(source: Any) -> Iterable[pa.RecordBatch]:
    """``datasets`` writes the IPC stream format; plain Arrow files (IPC file format) work too."""
    import pyarrow.ipc as ipc

    try:
        return ipc.open_stream(source)
    except pa.ArrowInvalid:
        source.seek(0)
        f = ipc.open_file(source)
        return (f.get_batch(i) for i in range(f.num_record_batches))


def _arrow_rows(src, part: Partition, batches: Iterable[pa.RecordBatch], stats: ReadStats,
                images=None) -> Iterator[dict[str, Any]]:
    wanted = set(_columns(src))
    first_row = 0
    it = iter(batches)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except Exception as err:
            if not _corrupt(err):
                raise
            stats.skip_file("corrupt", url=part.url, detail=f"after row {first_row}: {err}")
            return
        stats.bytes_read += batch.nbytes
        keep = [n for n in batch.schema.names if n in wanted]
        yield from _batch_rows(src, part, batch.select(keep), first_row, stats, images)
        first_row += batch.num_rows


def read_csv(src, part: Partition, stats: ReadStats, images=None) -> Iterator[dict[str, Any]]:
    """A CSV (or TSV) data file, streamed in blocks; the text, id and url columns stay strings."""
    import pyarrow.csv as pcsv

    def bad_row(row: Any) -> str:
        stats.record()
        stats.skip("invalid_row", url=part.url, detail=f"line {row.number}: {row.actual_columns} columns, "
                   f"expected {row.expected_columns}")
        return "skip"

    strings = [f for f in (src.text_field, src.id_field, src.url_field, src.date_field) if f]
    delimiter = "\t" if streams.strip_codec(part.rel).lower().endswith(".tsv") else ","
    with streams.open_input(part.url) as f:
        try:
            reader = pcsv.open_csv(
                f, read_options=pcsv.ReadOptions(block_size=8 << 20),
                parse_options=pcsv.ParseOptions(delimiter=delimiter, newlines_in_values=True,
                                                invalid_row_handler=bad_row),
                convert_options=pcsv.ConvertOptions(column_types={c: pa.string() for c in strings},
                                                    include_columns=_columns(src), include_missing_columns=True,
                                                    strings_can_be_null=False))
        except pa.ArrowInvalid as err:
            if "Empty CSV file" in str(err):
                stats.skip_file("empty", url=part.url, offset=0)
                return
            stats.skip_file("corrupt", url=part.url, detail=str(err))
            return
        yield from _arrow_rows(src, part, reader, stats, images)
