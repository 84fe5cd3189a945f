"""Sample tables (JSONL, Parquet, a ``datasets`` folder) of natural text: standard-library docstrings.

Every row has an ``id``, a ``text`` (one docstring with a unique heading, so exact dedup keeps them
all), a ``url`` into the Python docs, a ``date`` and two extra fields (``module``, ``chars``). The
rows are the same on every run with the same Python; ``n`` larger than the docstrings cycles them.
"""

from __future__ import annotations

import bz2
import functools
import gzip
import importlib
import inspect
import json
import lzma
import warnings
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import IO, Any

MODULES = (
    "abc", "argparse", "array", "ast", "asyncio", "base64", "bisect", "calendar", "codecs", "collections",
    "concurrent.futures", "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal",
    "difflib", "dis", "doctest", "email.message", "enum", "fractions", "ftplib", "functools", "gettext", "glob",
    "gzip", "hashlib", "heapq", "hmac", "html.parser", "http.client", "http.server", "imaplib", "inspect", "io",
    "ipaddress", "itertools", "json", "logging", "lzma", "mailbox", "math", "mimetypes", "multiprocessing",
    "numbers", "operator", "optparse", "os", "pathlib", "pickle", "pkgutil", "platform", "plistlib", "poplib",
    "pprint", "queue", "random", "re", "sched", "secrets", "selectors", "shelve", "shlex", "shutil", "signal",
    "smtplib", "socket", "socketserver", "sqlite3", "ssl", "statistics", "string", "struct", "subprocess",
    "tarfile", "tempfile", "textwrap", "threading", "timeit", "tokenize", "traceback", "types", "typing",
    "unittest", "urllib.parse", "urllib.request", "uuid", "warnings", "weakref", "xml.dom.minidom",
    "xml.etree.ElementTree", "zipfile",
)
EPOCH = datetime(2024, 1, 1, tzinfo=timezone.utc)
MIN_CHARS = 200  # docstrings shorter than this are too thin to be documents


@functools.lru_cache(maxsize=1)
def docstrings() -> tuple[tuple[str, str, str], ...]:
    """(module, qualified name, docstring) of the public, documented members of ``MODULES``, sorted."""
    found: dict[str, tuple[str, str, str]] = {}
    for name in MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        members = [(name, module)] + [(f"{name}.{attr}", getattr(module, attr, None))
                                      for attr in sorted(vars(module)) if not attr.startswith("_")]
        for qualname, obj in members:
            with warnings.catch_warnings():  # some members are deprecated aliases (typing.io, ...)
                warnings.simplefilter("ignore")
                doc = inspect.getdoc(obj) if obj is not None else None
            if doc and len(doc) >= MIN_CHARS and doc not in {d for _, _, d in found.values()}:
                found[qualname] = (name, qualname, doc)
    return tuple(found[k] for k in sorted(found))


def rows(n: int, *, start: int = 0) -> Iterator[dict[str, Any]]:
    """``n`` sample rows: id, text, url, date (ISO 8601 string), module, chars."""
    docs = docstrings()
    for i in range(start, start + n):
        module, qualname, doc = docs[i % len(docs)]
        text = f"{qualname} (note {i})\n\n{doc}"
        yield {"id": f"doc-{i:07d}", "text": text,
               "url": f"https://docs.python.org/3/library/{module}.html#{qualname}",
               "date": (EPOCH + timedelta(hours=i)).isoformat().replace("+00:00", "Z"),
               "module": module, "chars": len(text)}


def _open_out(path: Path) -> IO[bytes]:
    """A writer compressed by the file's suffix (.gz, .bz2, .xz, .zst) or plain."""
    suffix = path.suffix.lower()
    if suffix == ".gz":
        return gzip.open(path, "wb")
    if suffix == ".bz2":
        return bz2.open(path, "wb")
    if suffix == ".xz":
        return lzma.open(path, "wb")
    if suffix in (".zst", ".zstd"):
        import zstandard

        return zstandard.open(path, "wb")
    return path.open("wb")


def write_jsonl(path: str | Path, n: int, *, start: int = 0, text_field: str = "text") -> str:
    """``n`` rows as JSON Lines (compressed by suffix); ``text_field`` renames the text field."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _open_out(path) as f:
        for row in rows(n, start=start):
            if text_field != "text":
                row[text_field] = row.pop("text")
            f.write(json.dumps(row, ensure_ascii=False).encode("utf-8") + b"\n")
    return str(path)


def _columns(n: int, start: int = 0) -> dict[str, list[Any]]:
    cols: dict[str, list[Any]] = {}
    for row in rows(n, start=start):
        for k, v in row.items():
            cols.setdefault(k, []).append(v)
    return cols


def write_parquet(path: str | Path, n: int, *, row_group_size: int = 1000, start: int = 0) -> str:
    """``n`` rows as Parquet (zstd) with ``date`` as a UTC timestamp column and row groups of ``row_group_size``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = _columns(n, start)
    cols["date"] = [datetime.fromisoformat(d) for d in cols["date"]]
    table = pa.table({**cols, "date": pa.array(cols["date"], pa.timestamp("us", tz="UTC"))})
    pq.write_table(table, path, row_group_size=row_group_size, compression="zstd")
    return str(path)


def write_hf_dataset(path: str | Path, n: int, *, num_shards: int = 1, split: str | None = None) -> str:
    """``n`` rows saved with ``datasets``' ``save_to_disk``; with ``split``, a DatasetDict of that split
    and a small ``other`` split (rows that the reader must not take)."""
    import datasets

    path = Path(path)
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        ds = datasets.Dataset.from_dict(_columns(n))
        if split is None:
            ds.save_to_disk(str(path), num_shards=num_shards)
        else:
            other = datasets.Dataset.from_dict(_columns(3, start=n))
            datasets.DatasetDict({split: ds, "other": other}).save_to_disk(
                str(path), num_shards={split: num_shards, "other": 1})
    finally:
        if bars:
            datasets.enable_progress_bars()
    return str(path)
