"""Listing a source's files by include/exclude globs, the same way on local disk and on S3."""

from __future__ import annotations

from fnmatch import fnmatchcase
from posixpath import basename

from pretrain import storage


def matches(rel: str, pattern: str) -> bool:
    """A pattern without '/' matches the file name; with '/', the path ('*' crosses folders)."""
    if "/" not in pattern:
        return fnmatchcase(basename(rel), pattern)
    if fnmatchcase(rel, pattern):
        return True
    return pattern.startswith("**/") and matches(rel, pattern[3:])


def list_files(uri: str, include: list[str], exclude: list[str]) -> list[tuple[str, str]]:
    """Sorted (url, relative path) of the files under ``uri`` (or ``uri`` itself if a file)."""
    fs, root = storage.filesystem(uri)
    if fs.isfile(root):
        return [(uri, basename(root))]
    prefix = root.rstrip("/") + "/"
    found = []
    for path in sorted(fs.find(root)):
        rel = path[len(prefix):] if path.startswith(prefix) else basename(path)
        if any(part.startswith(".") for part in rel.split("/")):
            continue  # hidden files and our own temporary files
        if any(matches(rel, p) for p in include) and not any(matches(rel, p) for p in exclude):
            found.append((storage.join(uri, rel), rel))
    return found
