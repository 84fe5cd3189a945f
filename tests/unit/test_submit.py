"""``pretrain submit`` against a local HTTP stand-in for the KFP v2beta1 API: the real ``kfp.Client`` talks to
a real server on loopback, which records what it was sent (namespace, experiment, service account, the run's
pipeline spec) and answers as a KFP API server does."""

from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

from pretrain import cli

S3_ROOT = "run_root=s3://bucket/runs/tiny"
pytestmark = pytest.mark.filterwarnings("ignore:This client only works:FutureWarning")


class Server:
    """A loopback HTTP server whose ``route(method, path, query, body)`` returns (status, JSON)."""

    def __init__(self, route):
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                url = urlparse(self.path)
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                request = {"method": self.command, "path": url.path, "query": parse_qs(url.query), "raw": raw,
                           "body": json.loads(raw) if raw else None}
                server.requests.append(request)
                status, answer = route(request)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _answer

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class KfpApi:
    """The endpoints ``kfp.Client.create_run_from_pipeline_package`` calls: healthz, experiments (list by
    name, create) and runs (create, with the pipeline spec inline)."""

    def __init__(self, experiments=()):
        self.experiments = list(experiments)

    def __call__(self, request):
        method, path = request["method"], request["path"]
        if (method, path) == ("GET", "/apis/v2beta1/healthz"):
            return 200, {"multi_user": False}
        if (method, path) == ("GET", "/apis/v2beta1/experiments"):
            wanted = json.loads(request["query"]["filter"][0])["predicates"][0]["stringValue"]
            found = [e for e in self.experiments if e["display_name"] == wanted]
            return 200, {"experiments": found, "total_size": len(found)} if found else {}
        if (method, path) == ("POST", "/apis/v2beta1/experiments"):
            experiment = {**request["body"], "experiment_id": f"exp-{uuid.uuid4().hex[:8]}"}
            self.experiments.append(experiment)
            return 200, experiment
        if (method, path) == ("POST", "/apis/v2beta1/runs"):
            return 200, {**request["body"], "run_id": "run-0001", "state": "PENDING"}
        return 404, {"error": f"no route {method} {path}", "code": 5}


@pytest.fixture
def kfp_api():
    servers = []

    def start(api=None):
        servers.append(Server(api or KfpApi()))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


@pytest.fixture(autouse=True)
def _no_ambient_cluster(monkeypatch, tmp_path):
    """No kubeconfig, no in-cluster config and no KFP settings from the machine running the tests."""
    _use_kubeconfig(monkeypatch, tmp_path / "no-kubeconfig")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for key in ("KUBERNETES_SERVICE_HOST", "KF_PIPELINES_ENDPOINT", "KF_PIPELINES_UI_ENDPOINT", "KFP_HOST",
                "KF_PIPELINES_DEFAULT_EXPERIMENT_NAME", "KF_PIPELINES_OVERRIDE_EXPERIMENT_NAME"):
        monkeypatch.delenv(key, raising=False)


def _use_kubeconfig(monkeypatch, path):
    """$KUBECONFIG, also where the kubernetes client looks by default (it reads $KUBECONFIG once, at import)."""
    from kubernetes.config import kube_config

    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))


def _calls(server, method=None):
    return [(r["method"], r["path"]) for r in server.requests if method in (None, r["method"])]


def test_submit_creates_the_experiment_and_a_run_with_the_compiled_pipeline(kfp_api, monkeypatch, capsys):
    secret_value = "sup3r-s3cret-value"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA-never-uploaded")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret_value)
    api = KfpApi()
    server = kfp_api(api)
    code = cli.main(["submit", "tiny", S3_ROOT, "train.max_steps=7", "--host", server.url, "--namespace", "team-a",
                     "--experiment", "nightly", "--service-account", "pipeline-runner"])
    assert code == 0
    assert "as KFP run run-0001" in capsys.readouterr().out
    # multi-user: the namespace is given, so no healthz probe; the experiment is looked up, then created in it
    assert _calls(server) == [("GET", "/apis/v2beta1/experiments"), ("POST", "/apis/v2beta1/experiments"),
                              ("POST", "/apis/v2beta1/runs")]
    lookup, created, run = server.requests
    assert lookup["query"]["namespace"] == ["team-a"]
    assert created["body"]["display_name"] == "nightly" and created["body"]["namespace"] == "team-a"
    body = run["body"]
    assert body["experiment_id"] == api.experiments[0]["experiment_id"]
    assert body["service_account"] == "pipeline-runner"
    assert body["display_name"].startswith("tiny-")
    recipe = json.loads(body["runtime_config"]["parameters"]["recipe"])
    assert recipe["train"]["max_steps"] == 7 and recipe["run_root"] == "s3://bucket/runs/tiny"
    # the pipeline spec travels inline, with its Kubernetes platform spec: the Secret by name, required
    spec, platform = body["pipeline_spec"]["pipeline_spec"], body["pipeline_spec"]["platform_spec"]
    assert spec["pipelineInfo"]["name"] == "pretrain"
    assert "cleanup" in spec["root"]["dag"]["tasks"]
    secret = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-train"]["secretAsEnv"][0]
    assert secret["secretName"] == "pretrain-s3" and secret["optional"] is False
    tasks = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    assert tasks["train"]["cachingOptions"] == {} or not tasks["train"]["cachingOptions"].get("enableCache")
    for request in server.requests:  # no credential value ever leaves this machine
        assert secret_value.encode() not in request["raw"] and b"AKIA-never-uploaded" not in request["raw"]


def test_submit_reuses_an_experiment_and_defaults_the_service_account_from_the_recipe(kfp_api):
    server = kfp_api(KfpApi(experiments=[{"experiment_id": "exp-42", "display_name": "pretrain"}]))
    run_id = cli.submit(cli.load_recipe("tiny", [S3_ROOT, "cluster.service_account=pretrain-pipelines"]),
                        server.url, "pretrain")
    assert run_id == "run-0001"
    # single-user KFP (no namespace): the client probes healthz; the experiment exists, so none is created
    assert _calls(server) == [("GET", "/apis/v2beta1/healthz"), ("GET", "/apis/v2beta1/experiments"),
                              ("POST", "/apis/v2beta1/runs")]
    body = server.requests[-1]["body"]
    assert body["experiment_id"] == "exp-42" and body["service_account"] == "pretrain-pipelines"


def test_submit_with_an_image_override(kfp_api):
    server = kfp_api()
    assert cli.main(["submit", "tiny", S3_ROOT, "--host", server.url, "--image", "registry.example/p:9.9"]) == 0
    executors = server.requests[-1]["body"]["pipeline_spec"]["pipeline_spec"]["deploymentSpec"]["executors"]
    assert {e["container"]["image"] for e in executors.values()} == {"registry.example/p:9.9"}


def test_submit_refuses_a_local_run_root_before_any_request(kfp_api, capsys):
    server = kfp_api()
    assert cli.main(["submit", "tiny", "run_root=/tmp/runs/tiny", "--host", server.url]) == 2
    assert "a cluster run needs run_root=s3://" in capsys.readouterr().err
    assert server.requests == []


def test_an_explicit_cluster_check_without_a_cluster_config_fails_before_any_request(kfp_api, capsys):
    pytest.importorskip("pretrain.launch.cluster")
    server = kfp_api()
    assert cli.main(["submit", "tiny", S3_ROOT, "--host", server.url, "--check-cluster"]) == 2
    assert capsys.readouterr().err.startswith("pretrain: error:")
    assert server.requests == []


class KubeApi:
    """A Kubernetes API stand-in holding some namespaces and Secrets (GET of one object; 404 otherwise)."""

    def __init__(self, namespaces=(), secrets=None):
        self.namespaces, self.secrets = set(namespaces), dict(secrets or {})

    def __call__(self, request):
        parts = request["path"].strip("/").split("/")
        if request["method"] == "GET" and parts[:3] == ["api", "v1", "namespaces"]:
            if len(parts) == 4 and parts[3] in self.namespaces:
                return 200, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": parts[3]},
                             "status": {"phase": "Active"}}
            if len(parts) == 6 and parts[4] == "secrets" and (parts[3], parts[5]) in self.secrets:
                return 200, {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                             "metadata": {"name": parts[5], "namespace": parts[3]},
                             "data": self.secrets[(parts[3], parts[5])]}
        return 404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
                     "message": f"{request['path']} not found"}


def _kubeconfig(path, server_url):
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "stand-in",
        "clusters": [{"name": "stand-in", "cluster": {"server": server_url}}],
        "users": [{"name": "me", "user": {"token": "not-a-real-token"}}],
        "contexts": [{"name": "stand-in", "context": {"cluster": "stand-in", "user": "me",
                                                       "namespace": "pretrain"}}]}))


@pytest.mark.parametrize("missing", ["namespace", "secret"])
def test_a_missing_namespace_or_secret_fails_before_anything_is_created(kfp_api, monkeypatch, tmp_path, capsys,
                                                                        missing):
    pytest.importorskip("pretrain.launch.cluster")
    keys = {k: "eA==" for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    kube = Server(KubeApi(namespaces=[] if missing == "namespace" else ["pretrain"], secrets={}))
    try:
        _kubeconfig(tmp_path / "kubeconfig", kube.url)
        _use_kubeconfig(monkeypatch, tmp_path / "kubeconfig")
        server = kfp_api()
        assert cli.main(["submit", "tiny", S3_ROOT, "--host", server.url]) == 2  # checked by default: a config
        err = capsys.readouterr().err
        assert ("pretrain" if missing == "namespace" else "pretrain-s3") in err
        assert server.requests == []  # nothing was created on KFP
        assert kube.requests and all(r["method"] == "GET" for r in kube.requests)
        # with the Secret there, the check passes and the run is created
        kube_api = KubeApi(namespaces=["pretrain"], secrets={("pretrain", "pretrain-s3"): keys})
        kube.close()
        kube = Server(kube_api)
        _kubeconfig(tmp_path / "kubeconfig", kube.url)
        assert cli.main(["submit", "tiny", S3_ROOT, "--host", server.url]) == 0
        assert ("POST", "/apis/v2beta1/runs") in _calls(server)
    finally:
        kube.close()
