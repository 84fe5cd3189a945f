"""Code repositories: a folder, an archive (tar, tar.gz/bz2/xz/zst, zip) or a local git repository at a ref.

Each repository is split into ``src.partitions`` buckets by a hash of the file path, so adding a
file changes only its own bucket. Every listed file is one record: a document, or skipped with a
reason a user can audit (vendored, generated, minified, binary, too_large, empty, corrupt). The
size of a file is known from the listing (stat, tar header, zip directory, ``git ls-tree --long``)
so a giant file is never read. Git blobs stream through one ``git cat-file --batch`` process.

This module plans and reads; ``repositories`` lists and loads a repository's files, ``classify``
says what a file is (language, skip reasons, licence).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import xxhash

from pretrain import storage
from pretrain.data.files import matches
from pretrain.data.readers.base import InputError, Partition, ReadStats, document
from pretrain.data.readers.code.classify import (
    decode,
    is_generated,
    is_minified,
    language,
    license_entry,
    looks_binary,
    name_reason,
    spdx_id,
)
from pretrain.data.readers.code.repositories import (
    Broken,
    Entry,
    GitRepository,
    Loader,
    Repository,
    TarRepository,
    is_git,
    open_repository,
    remote_git_error,
    repositories,
)

# ---------------------------------------------------------------- plan


def plan(src, location: str) -> list[Partition]:
    """``src.partitions`` buckets per repository; a file's bucket is a hash of its path."""
    repos = repositories(src, location)
    if src.ref != "HEAD":
        if storage.is_remote(location):
            raise remote_git_error(location)
        if not any(not storage.is_remote(url) and os.path.isdir(url) and is_git(url) for _, url in repos):
            raise InputError(location, None, f"ref {src.ref!r} is set but this is not a git repository")
    for _, url in repos:  # a ref that does not exist fails here, before any work is fanned out
        if not storage.is_remote(url) and os.path.isdir(url) and is_git(url):
            GitRepository(url, src, ReadStats(), report_breaks=False)
    n = src.partitions
    return [Partition(src.name, url, name, unit="bucket", start=i, end=n) for name, url in repos for i in range(n)]


def bucket(path: str, count: int) -> int:
    return xxhash.xxh64_intdigest(path.encode("utf-8", "surrogatepass")) % count


# ---------------------------------------------------------------- read


def read(src, part: Partition, stats: ReadStats) -> Iterator[dict]:
    """The documents of one bucket of one repository; every listed file is one record."""
    repo = open_repository(part.url, src, stats, report_breaks=part.start == 0)
    try:
        yield from _read(src, part, stats, repo)
    finally:
        repo.close()


def _selected(src, path: str) -> bool:
    return any(matches(path, p) for p in src.include) and not any(matches(path, p) for p in src.exclude)


def _read(src, part: Partition, stats: ReadStats, repo: Repository) -> Iterator[dict]:
    count, mine = max(part.end, 1), part.start
    if isinstance(repo, TarRepository) and not src.max_documents and src.license:
        yield from _read_tar_stream(src, stats, repo, lambda p: _selected(src, p) and bucket(p, count) == mine)
        return
    listed = repo.listing()
    license = src.license or _detect_license(repo, listed)
    entries = sorted((e for e in listed if _selected(src, e.path)), key=lambda e: e.path)
    if src.max_documents:
        entries = entries[: src.max_documents]
    todo = []
    for e in entries:
        if bucket(e.path, count) != mine:
            continue
        stats.record()
        if reason := _before_read(src, e):
            stats.skip(reason, url=repo.file_url(e.path), detail=f"{e.size} bytes")
        else:
            todo.append(e)
    dates = repo.dates([e.path for e in todo])
    for entry, load in repo.contents(todo):
        if (row := _document(src, stats, repo, entry, load, license, dates.get(entry.path, ""))) is not None:
            yield row


def _read_tar_stream(src, stats: ReadStats, repo: TarRepository, wanted: Callable[[str], bool]) -> Iterator[dict]:
    """One pass over a tar stream, each member decided as it comes (no listing needed: licence given)."""
    for entry, load in repo.stream(wanted):
        stats.record()
        if reason := _before_read(src, entry):
            stats.skip(reason, url=repo.file_url(entry.path), detail=f"{entry.size} bytes")
        elif (row := _document(src, stats, repo, entry, load, src.license, "")) is not None:
            yield row


def _before_read(src, e: Entry) -> str | None:
    reason = name_reason(e.path)
    if reason is None and e.size > src.max_document_bytes:
        return "too_large"
    return reason


def _detect_license(repo: Repository, listed: list[Entry]) -> str:
    """The SPDX id from the repository's LICENSE / COPYING file, or ""."""
    if isinstance(repo, TarRepository):
        data = repo.license_text
    else:
        found = license_entry(listed)
        if found is None:
            return ""
        pairs = repo.contents([found])
        try:
            data = next(pairs)[1]()
        except (Broken, StopIteration):
            return ""
        finally:
            pairs.close()
    if not data:
        return ""
    return spdx_id(data.decode("utf-8", "replace"))


def _document(src, stats: ReadStats, repo: Repository, entry: Entry, load: Loader, license: str,
              date: str) -> dict | None:
    url = repo.file_url(entry.path)
    try:
        data = load()
    except Broken as err:
        stats.skip("corrupt", url=url, offset=err.offset, detail=err.detail)
        return None
    stats.bytes_read += len(data)
    if len(data) > src.max_document_bytes:  # grew since it was listed, or its header lied
        stats.skip("too_large", url=url, detail=f"more than {src.max_document_bytes} bytes")
        return None
    lang = language(entry.path)
    reason = _content_reason(lang, data)
    text = None
    if reason is None:
        text = decode(data, stats)
        reason = "binary" if text is None else None
    if reason is not None or text is None:
        stats.skip(reason or "binary", url=url, detail=f"{len(data)} bytes")
        return None
    return document(src, source_id=f"{repo.name}/{entry.path}", text=text, url=url, date=date, license=license,
                    meta={"repo": repo.name, "path": entry.path, "language": lang, "bytes": len(data),
                          **repo.meta()})


def _content_reason(lang: str, data: bytes) -> str | None:
    if not data or data.isspace():
        return "empty"
    if looks_binary(data):
        return "binary"
    if is_generated(data):
        return "generated"
    if is_minified(lang, data):
        return "minified"
    return None
