"""Readers: one module per source format, each with ``plan`` (optional) and ``read``.

See ``base`` for the contract. Readers of image samples (``images``, ``webdataset``, and ``tables``
with an ``image_field``) also take ``images=`` (the recipe's ``ImagesConfig``) in ``read``.
Modules are imported only when their format is used, so a source format's heavy dependencies
(mwparserfromhell, datasets, ...) load only where they are needed.
"""

from __future__ import annotations

import importlib
from types import ModuleType

MODULES = {
    "warc": "warc", "wet": "warc", "wikipedia": "wikipedia", "code": "code",
    "jsonl": "tables", "parquet": "tables", "hf": "tables", "images": "images", "webdataset": "webdataset",
}


def reader(fmt: str) -> ModuleType:
    """The reader module of a source format."""
    if fmt not in MODULES:
        raise ValueError(f"unknown source format {fmt!r}; known: {', '.join(sorted(MODULES))}")
    return importlib.import_module(f"pretrain.data.readers.{MODULES[fmt]}")
