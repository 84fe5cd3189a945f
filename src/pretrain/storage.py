"""Every location is a URL: a local path or ``s3://bucket/key``.

S3 endpoint and credentials come from the standard AWS environment (``AWS_ENDPOINT_URL_S3`` or
``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``), so MinIO, SeaweedFS, Ceph
and cloud S3 all work. Writes are atomic: data goes to a temporary local file first and only a
complete file is renamed (local) or uploaded in one PUT (S3), so a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import fsspec

COMMIT_MARKER = "_COMMITTED"


class StorageError(RuntimeError):
    """A location cannot be reached or used; the message names the URL."""


def s3_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def is_remote(url: str) -> bool:
    return "://" in str(url) and not str(url).startswith("file://")


def fs_options(protocol: str) -> dict[str, Any]:
    if protocol in ("s3", "s3a"):
        opts: dict[str, Any] = {"config_kwargs": {"connect_timeout": 10, "read_timeout": 120,
                                                   "retries": {"max_attempts": 5, "mode": "standard"}}}
        endpoint = s3_endpoint()
        if endpoint:
            opts["client_kwargs"] = {"endpoint_url": endpoint}
        # Written objects are read back at once by the next step: never serve stale listings.
        opts["use_listings_cache"] = False
        return opts
    return {}


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for ``url`` and the path inside it."""
    url = str(url)
    protocol = urlparse(url).scheme if is_remote(url) else "file"
    fs, path = fsspec.core.url_to_fs(url, **fs_options(protocol))
    return fs, path


def join(base: str, *parts: str) -> str:
    base = str(base)
    if is_remote(base):
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(base, *parts))


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    return fs.exists(path)


def listdir(url: str) -> list[str]:
    """Names (not URLs) directly under ``url``; empty if it does not exist."""
    fs, path = filesystem(url)
    if not fs.exists(path):
        return []
    return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))


def read_bytes(url: str) -> bytes:
    fs, path = filesystem(url)
    with fs.open(path, "rb") as f:
        return f.read()


def read_text(url: str) -> str:
    return read_bytes(url).decode("utf-8")


def read_json(url: str) -> Any:
    return json.loads(read_bytes(url))


@contextlib.contextmanager
def atomic_path(url: str) -> Iterator[str]:
    """Yield a local file path to write; on success it becomes ``url`` in one step.

    On any error (Ctrl-C included) the temporary file is removed and ``url`` is untouched.
    """
    url = str(url)
    fs, path = filesystem(url)
    if is_remote(url):
        fd, tmp = tempfile.mkstemp(prefix=".pretrain-", suffix=Path(path).suffix)
        os.close(fd)
    else:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{Path(path).name}.", suffix=".tmp", dir=Path(path).parent)
        os.close(fd)
    try:
        yield tmp
        if is_remote(url):
            fs.put_file(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes(url: str, data: bytes) -> None:
    with atomic_path(url) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_text(url: str, text: str) -> None:
    write_bytes(url, text.encode("utf-8"))


def write_json(url: str, obj: Any) -> None:
    write_text(url, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def remove(url: str) -> None:
    fs, path = filesystem(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def local_copy(url: str, cache_dir: str | None = None) -> str:
    """A local path holding ``url`` (a file or a folder); remote data is downloaded once.

    Safe when several processes (the ranks of one node) ask at once: each downloads to its own
    temporary name and the first rename wins; the cached copy is complete whenever it exists.
    """
    if not is_remote(url):
        return str(url)
    fs, path = filesystem(url)
    root = Path(cache_dir or os.environ.get("PRETRAIN_CACHE", Path(tempfile.gettempdir()) / "pretrain-cache"))
    dest = root / urlparse(url).netloc / urlparse(url).path.lstrip("/")
    if dest.exists():
        return str(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.parent / f".{dest.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial"
    try:
        if fs.isdir(path):
            fs.get(path.rstrip("/") + "/", str(partial), recursive=True)
        else:
            fs.get_file(path, str(partial))
        try:
            os.rename(partial, dest)
        except OSError:
            if not dest.exists():  # not a lost race with another process: a real error
                raise
    finally:
        if partial.exists():
            shutil.rmtree(partial) if partial.is_dir() else partial.unlink()
    return str(dest)


def upload_dir(local_dir: str, url: str) -> None:
    """Copy a local folder to ``url`` (a no-op when it already is that folder)."""
    if not is_remote(url):
        if Path(local_dir).resolve() != Path(url).resolve():
            shutil.copytree(local_dir, url, dirs_exist_ok=True)
        return
    fs, path = filesystem(url)
    for file in sorted(Path(local_dir).rglob("*")):
        if file.is_file():
            fs.put_file(str(file), f"{path.rstrip('/')}/{file.relative_to(local_dir).as_posix()}")


# S3 error codes that mean "these credentials are not accepted here" rather than "this bucket is missing".
_REFUSED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
            "InvalidSecurity", "AllAccessDisabled", "AuthorizationHeaderMalformed", "MissingSecurityHeader"}


def _credentials_hint(secret: str | None) -> str:
    where = (f"the Secret {secret!r} (keys AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)" if secret
             else "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY")
    if not os.environ.get("AWS_ACCESS_KEY_ID"):
        return f"no credentials are set: they come from {where}"
    return f"check {where}"


def ensure_bucket(url: str, secret: str | None = None, create: bool = True) -> bool:
    """Make sure the bucket of an ``s3://`` URL exists, creating it with the ``minio`` client when missing
    (and ``create``); True when it was created. Local paths pass.

    Raises :class:`StorageError` naming the endpoint (and ``secret``, where the credentials come from on a
    cluster) when the endpoint is unreachable or refuses the credentials.
    """
    if not is_remote(url):
        return False
    parsed = urlparse(url)
    if parsed.scheme not in ("s3", "s3a"):
        return False
    import urllib3
    from minio import Minio
    from minio.error import S3Error

    endpoint = s3_endpoint() or "https://s3.amazonaws.com"
    ep = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
    http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=3, read=10), retries=urllib3.Retry(total=1))
    client = Minio(
        ep.netloc,
        access_key=os.environ.get("AWS_ACCESS_KEY_ID"),
        secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
        session_token=os.environ.get("AWS_SESSION_TOKEN"),
        secure=ep.scheme == "https",
        region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"),
        http_client=http,
    )
    bucket = parsed.netloc
    step = "checking"
    try:
        if client.bucket_exists(bucket):
            return False
        if not create:
            raise StorageError(f"{url}: bucket {bucket!r} does not exist at S3 endpoint {endpoint}")
        step = "creating"
        client.make_bucket(bucket)
        return True
    except S3Error as err:
        if err.code == "BucketAlreadyOwnedByYou":  # created meanwhile by another step
            return False
        if err.code in _REFUSED:
            what = (f"bucket {bucket!r} does not exist and the credentials may not create it" if step == "creating"
                    else "it refused the credentials")
            raise StorageError(f"{url}: S3 endpoint {endpoint}: {what} ({err.code}); "
                               f"{_credentials_hint(secret)}") from err
        raise StorageError(f"{url}: S3 endpoint {endpoint} refused {step} bucket {bucket!r}: {err.code}") from err
    except StorageError:
        raise
    except Exception as err:  # urllib3 connection errors, DNS, TLS
        where = f"the Secret {secret!r} (key AWS_ENDPOINT_URL)" if secret else "AWS_ENDPOINT_URL"
        raise StorageError(f"{url}: S3 endpoint {endpoint} is unreachable ({type(err).__name__}); "
                           f"check {where}") from err


def check_reachable(url: str) -> None:
    """Fail fast, naming the URL, when an S3 location's endpoint or bucket cannot be used.

    Creates a missing bucket (``ensure_bucket``); local paths always pass.
    """
    ensure_bucket(url)
