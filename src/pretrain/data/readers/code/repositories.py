"""Where a code repository's files come from: a folder (local or S3), a zip or tar archive, or a local
git repository at a ref. Each lists its files with their sizes (so a giant file is never read) and
loads their contents; a break inside an archive costs the files it hides, reported once.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import os
import struct
import subprocess
import tarfile
import threading
import zipfile
import zlib
from collections.abc import Callable, Iterator
from fnmatch import fnmatchcase
from operator import attrgetter
from posixpath import basename
from typing import IO, Any

from more_itertools import constrained_batches

from pretrain import storage
from pretrain.data.readers import streams
from pretrain.data.readers.base import InputError, ReadStats
from pretrain.data.readers.code.classify import LICENSE_FILES, license_entry

ARCHIVES = {".tar": None, ".tar.gz": "gzip", ".tgz": "gzip", ".tar.bz2": "bz2", ".tbz2": "bz2", ".tar.xz": "xz",
            ".txz": "xz", ".tar.zst": "zstd", ".tar.zstd": "zstd", ".zip": "zip"}
GIT_LOG_MAX_COMMITS = 100_000  # dates of files untouched in the last this-many commits stay ""
READ_BATCH_BYTES = 16 << 20  # S3 folders: files fetched concurrently, this many bytes at a time


class Broken(Exception):
    """A file inside an archive that cannot be read (the archive breaks before or inside it)."""

    def __init__(self, offset: int | None, detail: str) -> None:
        super().__init__(detail)
        self.offset, self.detail = offset, detail


@dataclasses.dataclass(frozen=True)
class Entry:
    """One file of a repository: its path inside it, its size, and how the repository fetches it."""

    path: str
    size: int
    key: Any = None


Loader = Callable[[], bytes]


# ---------------------------------------------------------------- which repositories


def archive_codec(name: str) -> tuple[str, str | None] | None:
    """(suffix, compression or 'zip') when ``name`` is an archive this reader opens, else None."""
    lower = name.lower()
    for suffix in sorted(ARCHIVES, key=len, reverse=True):
        if lower.endswith(suffix):
            return suffix, ARCHIVES[suffix]
    return None


def repo_name(url: str) -> str:
    """The repository's name: the base name of its folder, archive (suffix dropped) or git folder."""
    name = basename(str(url).rstrip("/")) or "repo"
    if (arch := archive_codec(name)) is not None:
        return name[: -len(arch[0])] or name
    return name[:-4] if name.endswith(".git") and len(name) > 4 else name


def is_git(path: str) -> bool:
    """A local git working tree (``.git`` folder or file) or a bare repository."""
    if os.path.exists(os.path.join(path, ".git")):
        return True
    return all(os.path.exists(os.path.join(path, p)) for p in ("HEAD", "objects", "refs"))


def remote_git_error(url: str) -> InputError:
    return InputError(url, None, "git repositories are read from local disk only (git needs a local clone); "
                                 "upload a .tar.gz/.zip of the repository or its files instead")


def repositories(src, location: str) -> list[tuple[str, str]]:
    """(name, url) of each repository at ``location``: itself, or each archive / git repository in it."""
    fs, path = storage.filesystem(location)
    remote = storage.is_remote(location)
    if not fs.exists(path):
        raise InputError(location, None, "repository not found (no such folder, archive or git repository)")
    if fs.isfile(path):
        if archive_codec(path) is None:
            raise InputError(location, None, "not a folder, an archive (" + ", ".join(ARCHIVES)
                             + ") or a git repository")
        return [(repo_name(location), location)]
    if remote and (location.rstrip("/").endswith(".git") or fs.exists(path.rstrip("/") + "/.git")):
        raise remote_git_error(location)
    if not remote and is_git(path):
        return [(repo_name(location), location)]
    members = _top_level_repositories(fs, path, remote)
    if not members:
        return [(repo_name(location), location)]
    found: list[tuple[str, str]] = []
    names = [repo_name(m) for m in members]
    for member, name in zip(members, names, strict=True):
        unique = name if names.count(name) == 1 else member  # a.zip and a.tar.gz: keep the suffixes apart
        found.append((unique, storage.join(location, member)))
    return found


def _top_level_repositories(fs, path: str, remote: bool) -> list[str]:
    """Names of the archives / git repositories that are all a folder holds at its top level, or []."""
    entries = [e for e in fs.ls(path, detail=True) if not basename(e["name"].rstrip("/")).startswith(".")]
    members = []
    for e in entries:
        name = basename(e["name"].rstrip("/"))
        archive = e["type"] == "file" and archive_codec(name) is not None
        if not (archive or (e["type"] == "directory" and not remote and is_git(os.path.join(path, name)))):
            return []
        members.append(name)
    return sorted(members)


# ---------------------------------------------------------------- paths


def _clean(path: str) -> str:
    """A path as text: undecodable bytes of a file name (surrogate escapes) become U+FFFD."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _norm(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name.lstrip("/")


def _hidden(path: str) -> bool:
    return path.startswith(".") or "/." in path


# ---------------------------------------------------------------- repositories


class Repository:
    """The files of one repository: listing (with sizes), contents, licence, dates."""

    def __init__(self, url: str, src, stats: ReadStats, report_breaks: bool) -> None:
        self.url, self.src, self.stats, self.report_breaks = url, src, stats, report_breaks
        self.name = repo_name(url)

    def listing(self) -> list[Entry]:
        raise NotImplementedError

    def contents(self, entries: list[Entry]) -> Iterator[tuple[Entry, Loader]]:
        """Each entry with a loader that must be called before the next one is taken."""
        raise NotImplementedError

    def file_url(self, path: str) -> str:
        return f"{self.url}#{path}"

    def dates(self, paths: list[str]) -> dict[str, str]:
        return {}

    def meta(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        return None


class FolderRepository(Repository):
    """A folder on local disk (walked, hidden and excluded folders pruned) or under an S3 prefix."""

    def __init__(self, url: str, src, stats: ReadStats, report_breaks: bool) -> None:
        super().__init__(url, src, stats, report_breaks)
        self.fs, self.root = storage.filesystem(url)
        self.remote = storage.is_remote(url)

    def file_url(self, path: str) -> str:
        return storage.join(self.url, path)

    def listing(self) -> list[Entry]:
        if self.remote:
            prefix = self.root.rstrip("/") + "/"
            found = self.fs.find(self.root, detail=True)
            return [Entry(p[len(prefix):], int(info["size"]), p) for p, info in found.items()
                    if p.startswith(prefix) and not _hidden(p[len(prefix):])]
        out: list[Entry] = []
        self._walk(self.root, "", out)
        return out

    def _walk(self, folder: str, rel: str, out: list[Entry]) -> None:
        with os.scandir(folder) as it:
            items = sorted(it, key=lambda e: e.name)
        for item in items:
            if item.name.startswith("."):
                continue
            path = rel + _clean(item.name)
            if item.is_dir(follow_symlinks=False):
                if not _pruned(path, self.src.exclude):
                    self._walk(item.path, path + "/", out)
            elif item.is_file(follow_symlinks=False):
                out.append(Entry(path, item.stat(follow_symlinks=False).st_size, item.path))

    def contents(self, entries: list[Entry]) -> Iterator[tuple[Entry, Loader]]:
        limit = self.src.max_document_bytes
        if not self.remote:
            for e in entries:
                yield e, functools.partial(_read_local, e.key, limit)
            return
        for batch in constrained_batches(entries, READ_BATCH_BYTES, get_len=attrgetter("size"), strict=False):
            got = self.fs.cat([e.key for e in batch], on_error="return")
            for e in batch:
                yield e, functools.partial(_fetched, got.get(e.key), e)


def _read_local(path: str, limit: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(limit + 1)


def _fetched(value: Any, entry: Entry) -> bytes:
    if isinstance(value, BaseException) or value is None:
        raise Broken(None, f"cannot read {entry.path}: {value!r}")
    return value


def _pruned(folder: str, exclude: list[str]) -> bool:
    """Every file under ``folder`` is excluded by a ``<dir>/*`` pattern: do not even walk it."""
    for p in exclude:
        if not p.endswith("/*"):
            continue
        q = p[:-2]
        while True:
            if q and fnmatchcase(folder, q):
                return True
            if not q.startswith("**/"):
                break
            q = q[3:]
    return False


class ZipRepository(Repository):
    """A zip archive read through its central directory (random access; ranged reads on S3).

    A zip whose central directory is lost (truncated) is read from its local file headers instead.
    """

    def __init__(self, url: str, src, stats: ReadStats, report_breaks: bool) -> None:
        super().__init__(url, src, stats, report_breaks)
        self.raw = streams.open_raw(url)
        self.zip: zipfile.ZipFile | None = None
        self.scanned: list[Entry] | None = None
        try:
            self.zip = zipfile.ZipFile(self.raw)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
            self.raw.seek(0)
            self.scanned, offset, why = _scan_local_headers(self.raw)
            if not self.scanned:
                raise InputError(url, offset, f"not a readable zip archive: {err}; {why}") from None
            if report_breaks:
                stats.skip_file("corrupt_archive", url=url, offset=offset,
                                detail=f"zip central directory unreadable ({err}); read {len(self.scanned)} files "
                                       f"from local headers, then: {why}")

    def listing(self) -> list[Entry]:
        if self.scanned is not None:
            return self.scanned
        assert self.zip is not None
        return [Entry(_norm(i.filename), i.file_size, i) for i in self.zip.infolist()
                if not i.is_dir() and not _hidden(_norm(i.filename))]

    def contents(self, entries: list[Entry]) -> Iterator[tuple[Entry, Loader]]:
        for e in entries:
            yield e, functools.partial(self._load, e)

    def _load(self, e: Entry) -> bytes:
        limit = self.src.max_document_bytes + 1
        try:
            if self.zip is not None:
                if e.key.flag_bits & 0x1:
                    raise Broken(e.key.header_offset, "encrypted")
                with self.zip.open(e.key) as f:
                    return f.read(limit)
            offset, method, csize = e.key
            self.raw.seek(offset)
            data = self.raw.read(csize)
            if len(data) < csize:
                raise Broken(offset, f"truncated: {len(data)} of {csize} bytes")
            return data if method == 0 else zlib.decompressobj(-15).decompress(data, limit)
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError, NotImplementedError, ValueError) as err:
            offset = e.key.header_offset if self.zip is not None else e.key[0]
            raise Broken(offset, str(err)) from None

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()
        self.raw.close()


_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")


def _scan_local_headers(raw: IO[bytes]) -> tuple[list[Entry], int, str]:
    """Files of a zip without its central directory: walk the local headers until they stop making sense."""
    entries: list[Entry] = []
    end = raw.seek(0, io.SEEK_END)
    offset = raw.seek(0)
    while True:
        head = raw.read(_LOCAL_HEADER.size)
        if len(head) < _LOCAL_HEADER.size or head[:4] != b"PK\x03\x04":
            why = "central directory reached" if head[:4] == b"PK\x01\x02" else "no further local file header"
            return entries, offset, why
        _, _, flags, method, _, _, _, csize, usize, nlen, xlen = _LOCAL_HEADER.unpack(head)
        name = raw.read(nlen).decode("utf-8" if flags & 0x800 else "cp437", "replace")
        raw.seek(xlen, io.SEEK_CUR)
        data_at = offset + _LOCAL_HEADER.size + nlen + xlen
        if flags & 0x8 or method not in (0, 8):
            return entries, offset, f"{name}: sizes in a trailing descriptor or method {method}: cannot frame"
        if data_at + csize > end:
            return entries, offset, f"{name}: truncated ({end - data_at} of {csize} bytes)"
        path = _norm(name)
        if not name.endswith("/") and not _hidden(path) and not flags & 0x1:
            entries.append(Entry(path, usize, (data_at, method, csize)))
        offset = data_at + csize
        raw.seek(offset)


class TarRepository(Repository):
    """A tar archive, plain or compressed, read as a stream (so S3 needs no seeks).

    Truncated or corrupt archives yield what precedes the break; the break is counted once per
    archive (by bucket 0). The listing is a pass of its own, made only when needed (max_documents,
    licence detection).
    """

    def __init__(self, url: str, src, stats: ReadStats, report_breaks: bool) -> None:
        super().__init__(url, src, stats, report_breaks)
        self.codec = (archive_codec(url) or ("", None))[1]
        self.license_text: bytes | None = None
        self._reported = False

    def _members(self) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo]]:
        """Regular, visible files in archive order; a break is reported and ends the stream."""
        raw = streams.open_raw(self.url)
        seen = 0
        tf = None
        try:
            tf = tarfile.open(fileobj=streams.decompress(raw, self.codec), mode="r|")  # noqa: SIM115 (closed with raw)
            for info in tf:
                seen += 1
                if info.isreg() and not _hidden(_norm(info.name)):
                    yield tf, info
        except (tarfile.TarError, EOFError, OSError, zlib.error, ValueError, _lzma_error()) as err:
            offset = tf.offset if tf is not None else 0
            if not seen:
                raise InputError(self.url, offset, f"not a readable tar archive: {err}") from None
            self._report(offset, f"archive breaks after {seen} members: {err}")
        finally:
            raw.close()

    def _report(self, offset: int, detail: str) -> None:
        if self.report_breaks and not self._reported:
            self._reported = True
            self.stats.skip_file("corrupt_archive", url=self.url, offset=offset,
                                 detail=detail + " (offset in the uncompressed tar stream)")

    def listing(self) -> list[Entry]:
        entries: list[Entry] = []
        candidates: dict[str, bytes] = {}  # licence files at the root or one folder down
        for tf, info in self._members():
            path = _norm(info.name)
            entries.append(Entry(path, info.size))
            if path.count("/") <= 1 and path.rsplit("/", 1)[-1].lower() in LICENSE_FILES and info.size <= 1 << 20:
                f = tf.extractfile(info)
                candidates[path] = f.read() if f is not None else b""
        chosen = license_entry(entries) if candidates else None
        self.license_text = candidates.get(chosen.path) if chosen is not None else None
        return entries

    def stream(self, wanted: Callable[[str], bool]) -> Iterator[tuple[Entry, Loader]]:
        """Members whose path is ``wanted``, in archive order; the first copy of a path wins."""
        seen: set[str] = set()
        for tf, info in self._members():
            path = _norm(info.name)
            if path in seen or not wanted(path):
                continue
            seen.add(path)
            yield Entry(path, info.size), functools.partial(self._load, tf, info)

    def contents(self, entries: list[Entry]) -> Iterator[tuple[Entry, Loader]]:
        todo = {e.path: e for e in entries}
        if todo:
            for e, load in self.stream(todo.__contains__):
                yield todo.pop(e.path), load
                if not todo:
                    return
        for e in todo.values():  # listed, but the archive broke before it this time
            yield e, functools.partial(_raise, Broken(None, "archive breaks before this file"))

    def _load(self, tf: tarfile.TarFile, info: tarfile.TarInfo) -> bytes:
        try:
            f = tf.extractfile(info)
            return f.read(self.src.max_document_bytes + 1) if f is not None else b""
        except (tarfile.TarError, EOFError, OSError, zlib.error, ValueError, _lzma_error()) as err:
            self._report(info.offset, f"member {info.name!r} unreadable: {err}")
            raise Broken(info.offset_data, str(err)) from None


def _lzma_error() -> type[Exception]:
    import lzma

    return lzma.LZMAError


def _raise(err: Exception) -> bytes:
    raise err


class GitRepository(Repository):
    """A local git repository's tracked files at ``src.ref``, blobs streamed by one ``git cat-file`` process."""

    def __init__(self, url: str, src, stats: ReadStats, report_breaks: bool) -> None:
        super().__init__(url, src, stats, report_breaks)
        self.path = url
        self.ref = src.ref
        done = self._git("rev-parse", "--verify", "--quiet", "--end-of-options", f"{self.ref}^{{commit}}",
                         check=False)
        if done.returncode != 0:
            raise InputError(url, None, f"git ref {self.ref!r} does not exist in this repository "
                                        f"(no such branch, tag or commit){_stderr(done)}")
        self.commit = done.stdout.decode().strip()

    def _git(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run(["git", "-C", self.path, *args], capture_output=True, env=_git_env())
        if check and done.returncode != 0:
            raise InputError(self.path, None, f"git {args[0]} failed{_stderr(done)}")
        return done

    def file_url(self, path: str) -> str:
        return f"{self.path}@{self.ref}:{path}"

    def meta(self) -> dict[str, Any]:
        return {"commit": self.commit}

    def listing(self) -> list[Entry]:
        out = self._git("ls-tree", "-r", "-z", "--long", "--full-tree", self.commit).stdout
        entries = []
        for item in out.split(b"\x00"):
            if not item:
                continue
            head, _, raw_path = item.partition(b"\t")
            mode, kind, sha, size = head.split()
            path = raw_path.decode("utf-8", "replace")
            if kind == b"blob" and mode != b"120000" and not _hidden(path):  # no symlinks, no submodules
                entries.append(Entry(path, int(size), sha))
        return entries

    def contents(self, entries: list[Entry]) -> Iterator[tuple[Entry, Loader]]:
        if not entries:
            return
        proc = subprocess.Popen(["git", "-C", self.path, "cat-file", "--batch"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=_git_env(), bufsize=1 << 16)
        assert proc.stdin is not None and proc.stdout is not None
        writer = threading.Thread(target=_feed, args=(proc.stdin, [e.key for e in entries]), daemon=True)
        writer.start()
        try:
            for e in entries:
                yield e, functools.partial(_read_blob, proc.stdout, e)
        finally:
            _stop(proc)
            writer.join()

    def dates(self, paths: list[str]) -> dict[str, str]:
        """Each path's last commit date (UTC, ISO 8601), from one ``git log`` pass stopped once all are found."""
        wanted = set(paths)
        found: dict[str, str] = {}
        if not wanted:
            return found
        proc = subprocess.Popen(
            ["git", "-C", self.path, "log", "--format=%x1e%cd", "--date=iso-strict-local", "--name-only",
             "--no-renames", "-z", f"--max-count={GIT_LOG_MAX_COMMITS}", self.commit, "--"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={**_git_env(), "TZ": "UTC"})
        assert proc.stdout is not None
        date, rest = "", b""
        try:
            while wanted and (chunk := proc.stdout.read(1 << 16)):
                *items, rest = (rest + chunk).split(b"\x00")
                for item in items:
                    if item.startswith(b"\x1e"):
                        date = item[1:].decode().replace("+00:00", "Z")
                        continue
                    path = item.lstrip(b"\n").decode("utf-8", "replace")
                    if path in wanted:
                        wanted.discard(path)
                        found[path] = date
        finally:
            _stop(proc)
        return found


def _stop(proc: subprocess.Popen) -> None:
    """End a git process we started, whether it finished or we stopped reading early."""
    if proc.stdout is not None:
        proc.stdout.close()
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def _git_env() -> dict[str, str]:
    return {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"}


def _stderr(done: subprocess.CompletedProcess) -> str:
    text = done.stderr.decode("utf-8", "replace").strip()
    return f": {text[:300]}" if text else ""


def _feed(stdin: IO[bytes], shas: list[bytes]) -> None:
    try:
        for sha in shas:
            stdin.write(sha + b"\n")
        stdin.close()
    except (BrokenPipeError, ValueError, OSError):
        return  # the reader stopped early and closed the pipe


def _read_blob(out: IO[bytes], e: Entry) -> bytes:
    header = out.readline()
    parts = header.split()
    if len(parts) != 3 or parts[0] != e.key:
        raise Broken(None, f"git cat-file answered {header[:100]!r} for {e.key.decode()}")
    size = int(parts[2])
    data = out.read(size)
    out.read(1)  # the newline after each blob
    return data


def open_repository(url: str, src, stats: ReadStats, report_breaks: bool) -> Repository:
    """The repository at ``url`` by what it is: archive, git repository or folder."""
    arch = archive_codec(url)
    remote = storage.is_remote(url)
    if arch is not None and (remote or os.path.isfile(url)):
        cls: type[Repository] = ZipRepository if arch[1] == "zip" else TarRepository
        return cls(url, src, stats, report_breaks)
    if not remote:
        if not os.path.isdir(url):
            raise InputError(url, None, "repository not found (no such folder, archive or git repository)")
        if is_git(url):
            return GitRepository(url, src, stats, report_breaks)
    elif url.rstrip("/").endswith(".git"):
        raise remote_git_error(url)
    return FolderRepository(url, src, stats, report_breaks)
