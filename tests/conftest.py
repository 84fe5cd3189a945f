"""Shared fixtures: a real S3 server (moto) on loopback, and clean AWS settings for every test."""

from __future__ import annotations

import uuid

import pytest

from pretrain.data.samples import s3server


@pytest.fixture(autouse=True)
def _no_ambient_aws(monkeypatch, tmp_path):
    for key in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PRETRAIN_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 server (moto) in its own process on 127.0.0.1; yields its endpoint URL."""
    log = (tmp_path_factory.mktemp("moto") / "server.log").open("w")
    try:
        proc, endpoint = s3server.start(log)
    except RuntimeError as err:
        raise RuntimeError(f"{err} (see {log.name})") from None
    yield endpoint
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


@pytest.fixture
def s3(s3_server, monkeypatch):
    """The standard AWS environment pointed at the test server, and a fresh bucket URL."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    from pretrain import storage

    storage.check_reachable(f"s3://{bucket}/")  # creates the bucket with the minio client
    return f"s3://{bucket}"


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    """A run-root-like base URL on local disk and on S3: storage-level tests run against both."""
    if request.param == "local":
        return str(tmp_path / "root")
    return request.getfixturevalue("s3") + "/root"


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one torch thread is faster, and far faster on a shared, loaded machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
