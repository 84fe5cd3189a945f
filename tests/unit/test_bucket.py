"""The run root's bucket: created with the minio client when missing, kept when there, and a clear error
(naming the endpoint and the Secret) when the endpoint is unreachable or refuses the credentials."""

from __future__ import annotations

import socket
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pretrain import storage

SECRET = "pretrain-s3"


def _s3_env(monkeypatch, endpoint, key="testing"):
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


def test_a_missing_bucket_is_created_and_an_existing_one_kept(s3_server, monkeypatch):
    _s3_env(monkeypatch, s3_server)
    bucket = f"fresh-{uuid.uuid4().hex[:12]}"
    root = f"s3://{bucket}/runs/tiny"
    assert storage.ensure_bucket(root, secret=SECRET) is True  # created
    storage.write_text(f"{root}/kept.txt", "still here")
    assert storage.ensure_bucket(root, secret=SECRET) is False  # there already: kept as it is
    assert storage.read_text(f"{root}/kept.txt") == "still here"
    storage.check_reachable(root)  # preflight's check, on the same code path


def test_a_missing_bucket_is_an_error_when_creation_is_not_asked(s3_server, monkeypatch):
    _s3_env(monkeypatch, s3_server)
    bucket = f"absent-{uuid.uuid4().hex[:12]}"
    with pytest.raises(storage.StorageError, match=f"bucket '{bucket}' does not exist at S3 endpoint {s3_server}"):
        storage.ensure_bucket(f"s3://{bucket}/x", create=False)


def test_local_roots_pass():
    assert storage.ensure_bucket("/tmp/runs/x", secret=SECRET) is False


def test_an_unreachable_endpoint_is_a_clear_error(monkeypatch):
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    _s3_env(monkeypatch, endpoint)
    with pytest.raises(storage.StorageError) as err:
        storage.ensure_bucket("s3://bucket/runs/tiny", secret=SECRET)
    message = str(err.value)
    assert f"S3 endpoint {endpoint} is unreachable" in message
    assert "s3://bucket/runs/tiny" in message and f"Secret '{SECRET}'" in message


class FakeS3:
    """An S3 endpoint on loopback that answers what a server does with refused credentials: HEAD with a bare
    status, other requests with an S3 error document (moto does not check secrets, so this is explicit)."""

    def __init__(self, responses):
        self.responses = responses  # method -> (status, code)
        self.requests = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                fake.requests.append((self.command, self.path, self.headers.get("Authorization", "")))
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                status, code = fake.responses[self.command]
                body = b"" if self.command == "HEAD" else (
                    f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>refused</Message>'
                    f"<Resource>{self.path}</Resource><RequestId>1</RequestId><HostId>h</HostId></Error>").encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if body:
                    self.wfile.write(body)

            do_HEAD = do_GET = do_PUT = _answer

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_s3():
    servers = []

    def start(responses):
        servers.append(FakeS3(responses))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def test_refused_credentials_name_the_endpoint_and_the_secret(fake_s3, monkeypatch):
    fake = fake_s3({"HEAD": (403, None), "GET": (403, "InvalidAccessKeyId"), "PUT": (403, "InvalidAccessKeyId")})
    _s3_env(monkeypatch, fake.endpoint, key="wrong-key")
    with pytest.raises(storage.StorageError) as err:
        storage.ensure_bucket("s3://bucket/runs/tiny", secret=SECRET)
    message = str(err.value)
    assert f"S3 endpoint {fake.endpoint}: it refused the credentials" in message
    assert f"Secret '{SECRET}'" in message and "AWS_SECRET_ACCESS_KEY" in message
    assert "wrong-key" in fake.requests[0][2]  # it did sign with the credentials from the environment
    assert "wrong-key" not in message and "testing" not in message  # and never prints a credential


def test_credentials_that_may_not_create_the_bucket(fake_s3, monkeypatch):
    fake = fake_s3({"HEAD": (404, None), "GET": (404, "NoSuchBucket"), "PUT": (403, "AccessDenied")})
    _s3_env(monkeypatch, fake.endpoint)
    with pytest.raises(storage.StorageError, match="bucket 'bucket' does not exist and the credentials may not "
                                                   r"create it \(AccessDenied\)"):
        storage.ensure_bucket("s3://bucket/runs/tiny", secret=SECRET)
    assert [m for m, _, _ in fake.requests] == ["HEAD", "PUT"]


def test_no_credentials_at_all_says_so(fake_s3, monkeypatch):
    fake = fake_s3({"HEAD": (403, None), "GET": (403, "AccessDenied"), "PUT": (403, "AccessDenied")})
    _s3_env(monkeypatch, fake.endpoint)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(storage.StorageError, match=f"no credentials are set: they come from the Secret '{SECRET}'"):
        storage.ensure_bucket("s3://bucket/runs/tiny", secret=SECRET)
