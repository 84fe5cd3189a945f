"""Ingest: read one partition of a raw source into a documents shard.

Readers yield document rows and count what they skip (too large, invalid UTF-8, corrupt records),
so nothing is lost silently. Web pages go HTML -> text with Resiliparse; WARC files are read with
FastWARC. A shard is written atomically and its manifest is the partition's commit marker.
"""

from __future__ import annotations

import collections
import json
import posixpath
from collections.abc import Iterator
from typing import Any

from pretrain import storage
from pretrain.config import Recipe, SourceConfig, fingerprint
from pretrain.data.documents import ShardWriter, document_id
from pretrain.data.files import list_files
from pretrain.data.plan import source_location
from pretrain.manifest import Manifest, reuse

LANGUAGES = {".py": "python", ".md": "markdown", ".rst": "rst", ".c": "c", ".h": "c", ".js": "javascript",
             ".ts": "typescript", ".go": "go", ".rs": "rust", ".java": "java", ".sh": "shell", ".txt": "text"}


def partition_files(recipe: Recipe, src: SourceConfig, index: int, count: int) -> list[tuple[str, str]]:
    files = list_files(source_location(recipe, src), src.include, src.exclude)
    if src.format == "code" and src.max_documents:
        files = files[: src.max_documents]
    return files[index::count]


def decode_text(data: bytes, skipped: collections.Counter, html: bool = False) -> str | None:
    """A document's text, or None (counted in ``skipped``) when it is not valid UTF-8 or is empty."""
    try:
        text = html_to_text(data) if html else data.decode("utf-8")
    except UnicodeDecodeError:
        skipped["invalid_utf8"] += 1
        return None
    if not text.strip():
        skipped["empty"] += 1
        return None
    return text


def read_code(src: SourceConfig, files: list[tuple[str, str]], skipped: collections.Counter) -> Iterator[dict]:
    for url, rel in files:
        fs, path = storage.filesystem(url)
        size = fs.size(path)
        if size > src.max_document_bytes:
            skipped["too_large"] += 1
            continue
        with fs.open(path, "rb") as f:
            data = f.read()
        text = decode_text(data, skipped)
        if text is None:
            continue
        ext = posixpath.splitext(rel)[1].lower()
        yield {
            "id": document_id(src.name, rel), "text": text, "source": src.name, "url": url, "date": "",
            "license": src.license,
            "meta": json.dumps({"path": rel, "language": LANGUAGES.get(ext, ext.lstrip(".")), "bytes": len(data)}),
        }


def html_to_text(body: bytes) -> str:
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.encoding import bytes_to_str, detect_encoding

    html = bytes_to_str(body, detect_encoding(body))
    text = extract_plain_text(html, main_content=False, alt_texts=False, links=False, preserve_formatting=True)
    return text.replace("\xa0", " ")  # &nbsp; is layout, not text: keep it out of the tokenizer


def read_warc(src: SourceConfig, files: list[tuple[str, str]], skipped: collections.Counter,
              limit: int | None) -> Iterator[dict]:
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    produced = 0
    for url, _rel in files:
        fs, path = storage.filesystem(url)
        with fs.open(path, "rb") as stream:
            records = ArchiveIterator(stream, record_types=WarcRecordType.response, parse_http=True)
            while True:
                try:
                    record = next(records)
                except StopIteration:
                    break
                except Exception:
                    skipped["corrupt_record"] += 1
                    break  # the rest of a broken archive cannot be framed
                if limit is not None and produced >= limit:
                    return
                target = record.headers.get("WARC-Target-URI", "")
                try:
                    body = record.reader.read(src.max_document_bytes + 1)
                except Exception:
                    skipped["corrupt_record"] += 1
                    break
                if len(body) > src.max_document_bytes:
                    skipped["too_large"] += 1
                    continue
                ctype = (record.http_headers.get("Content-Type", "") if record.http_headers else "").lower()
                text = decode_text(body, skipped, html="html" in ctype or not ctype)
                if text is None:
                    continue
                produced += 1
                yield {
                    "id": document_id(src.name, target or f"{url}#{record.record_id}"), "text": text,
                    "source": src.name, "url": target, "date": record.headers.get("WARC-Date", ""),
                    "license": src.license,
                    "meta": json.dumps({"warc": url, "record_id": record.record_id, "content_type": ctype}),
                }


def ingest(recipe: Recipe, partition: dict[str, Any]) -> Manifest:
    """Read partition ``{source, index, count}`` into ``documents/<source>/part-<index>.parquet``."""
    src = next((s for s in recipe.sources if s.name == partition["source"]), None)
    if src is None:
        raise ValueError(f"partition names unknown source {partition['source']!r}")
    index, count = int(partition["index"]), int(partition["count"])
    shard_url = recipe.url("documents", src.name, f"part-{index:05d}.parquet")
    manifest_url = shard_url.replace(".parquet", ".manifest.json")
    fp = fingerprint(src.model_dump(), index, count)
    if (done := reuse(manifest_url, fp)) is not None:
        return done
    files = partition_files(recipe, src, index, count)
    skipped: collections.Counter = collections.Counter()
    if src.format == "code":
        rows = read_code(src, files, skipped)
    else:
        limit = -(-src.max_documents // count) if src.max_documents else None
        rows = read_warc(src, files, skipped, limit)
    chars = 0
    with ShardWriter(shard_url) as writer:
        for row in rows:
            chars += len(row["text"])
            writer.write_rows([row])
        shard = writer.close()
    result = Manifest(
        kind="documents", root=recipe.url("documents", src.name), fingerprint=fp, shards=[shard],
        stats={"files": len(files), "documents": shard.rows, "chars": chars, "skipped": dict(skipped)},
        config=src.model_dump(), extra={"partition": {"source": src.name, "index": index, "count": count}},
    )
    result.save(manifest_url)
    return result
