"""Shared fixtures: a real S3 server (moto) on loopback, and clean AWS settings for every test."""

from __future__ import annotations

import socket
import uuid

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def _no_ambient_aws(monkeypatch, tmp_path):
    for key in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PRETRAIN_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 HTTP server process thread (moto) on 127.0.0.1; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


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
