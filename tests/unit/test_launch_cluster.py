"""The cluster launcher over HTTP with the official ``kubernetes`` client: create / attach / wait / fail /
delete against kmock (an emulated API server whose objects the test drives), and the answers kmock cannot
give (403, real 409/404 Status bodies) from a small stand-in server."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import kmock
import pytest
from kubernetes import client

from pretrain.config import load_recipe
from pretrain.launch.cluster import (
    ClusterError,
    JobFailed,
    check_cluster,
    delete_cluster_job,
    kube_api_client,
    run_cluster_job,
)
from pretrain.launch.render import S3_KEYS, job_name

NS = "pretrain"
PTJ = "kubeflow.org/v1/pytorchjobs"
TJ = "trainer.kubeflow.org/v1alpha1/trainjobs"


def recipe(launcher: str = "pytorchjob", *overrides: str):
    return load_recipe("tiny", ["run_root=s3://bucket/runs/r", f"train.launcher={launcher}", "train.nnodes=2",
                                *overrides])


def api_client(url: str) -> client.ApiClient:
    cfg = client.Configuration()
    cfg.host = url.rstrip("/")
    return client.ApiClient(cfg)


class Emulator:
    """kmock's Kubernetes emulator on its own event loop thread, with a namespace and the storage Secret."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._serve(),), daemon=True)
        self.thread.start()
        assert self.ready.wait(10), "kmock did not start"
        for res, kind, namespaced in ((PTJ, "PyTorchJob", True), (TJ, "TrainJob", True), ("v1/pods", "Pod", True),
                                      ("v1/secrets", "Secret", True), ("v1/namespaces", "Namespace", False)):
            self.km.resources[res] = {"kind": kind, "namespaced": namespaced}
        self.logs: dict[str, list[str]] = {}
        # kmock reads /api/v1/namespaces/<name> as a namespace prefix, not as a Namespace object: serve it directly
        self.km["get", f"/api/v1/namespaces/{NS}"] << {"apiVersion": "v1", "kind": "Namespace",
                                                        "metadata": {"name": NS}}

    async def _serve(self) -> None:
        self.stop = asyncio.Event()
        async with kmock.KubernetesEmulator() as km, kmock.Server(km) as server:
            self.km, self.url = km, str(server.url)
            self.ready.set()
            await self.stop.wait()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(10)

    def add(self, resource: str, name: str, obj: dict[str, Any], namespace: str | None = NS) -> None:
        meta = {"name": name, **({"namespace": namespace} if namespace else {}), **obj.pop("metadata", {})}
        self.km.objects[resource, namespace, name] = {"metadata": meta, **obj}

    def get(self, resource: str, name: str) -> dict[str, Any] | None:
        try:
            obj = self.km.objects[resource, NS, name]
        except KeyError:
            return None
        return None if obj.deleted else obj.raw

    def names(self, resource: str) -> list[str]:
        """The live objects of a resource (kmock keys them by a parsed resource, so compare by plural)."""
        plural = resource.rsplit("/", 1)[-1]
        return [key[2] for key, obj in self.km.objects.items() if key[0].plural == plural and not obj.deleted]

    def patch(self, resource: str, name: str, patch: dict[str, Any]) -> None:
        self.km.objects[resource, NS, name].patch(patch)

    def secret(self, data: dict[str, str], name: str = "pretrain-s3") -> None:
        self.add("v1/secrets", name, {"data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}})

    def pod(self, name: str, labels: dict[str, str], container: str, state: str = "running",
            status: dict[str, Any] | None = None, lines: list[str] | None = None,
            annotations: dict[str, str] | None = None) -> None:
        """A pod; its log endpoint hands out each line once, as a follow stream does."""
        self.add("v1/pods", name, {"metadata": {"labels": labels, "annotations": annotations or {},
                                                "uid": f"uid-{name}",
                                                "creationTimestamp": "2026-01-01T00:00:00Z"},
                                   "status": {"phase": "Running", **(status or {}), "containerStatuses": [
                                       {"name": container, "restartCount": 0, "state": {state: {}}}]}})
        self.logs[name] = list(lines or [])
        self.km["get", f"/api/v1/namespaces/{NS}/pods/{name}/log"] << (lambda: self._take(name))

    def _take(self, name: str) -> bytes:
        out, self.logs[name] = self.logs[name], []
        return "".join(line + "\n" for line in out).encode()


@pytest.fixture
def emu() -> Iterator[Emulator]:
    e = Emulator()
    e.secret({k: "x" for k in S3_KEYS})
    yield e
    e.close()


def wait_for(cond: Callable[[], Any], out: dict[str, Any] | None = None, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := cond():
            return value
        if out and "error" in out:
            raise AssertionError(f"the waiting thread failed: {out['error']!r}")
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["value"] = fn()
        except BaseException as err:  # handed to the test
            out["error"] = err

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, out


MASTER = {"training.kubeflow.org/replica-type": "master", "training.kubeflow.org/replica-index": "0"}
WORKER = {"training.kubeflow.org/replica-type": "worker", "training.kubeflow.org/replica-index": "0"}


def pod_labels(name: str, **extra: str) -> dict[str, str]:
    return {"pretrain.dev/job": name, "training.kubeflow.org/job-name": name, **extra}


def test_create_wait_stream_rank0_logs_succeed_then_attach_and_delete(emu):
    r = recipe()
    name = job_name(r, "run-1")
    lines: list[str] = []
    t, out = in_thread(lambda: run_cluster_job(r, "run-1", api_client(emu.url), lines.append, poll_seconds=0.05))
    job = wait_for(lambda: emu.get(PTJ, name), out)
    assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 1  # the rendered object was created
    emu.pod(f"{name}-worker-0", pod_labels(name, **WORKER), "pytorch", lines=["worker says hi"])
    emu.pod(f"{name}-master-0", pod_labels(name, **MASTER), "pytorch", lines=["[train] step=10 loss=4.2"])
    emu.patch(PTJ, name, {"status": {"conditions": [{"type": "Running", "status": "True"}]}})
    wait_for(lambda: "[train] step=10 loss=4.2" in lines)
    assert t.is_alive(), "returned while the job was running"
    emu.logs[f"{name}-master-0"].append("[train] step=20 loss=3.9")
    wait_for(lambda: "[train] step=20 loss=3.9" in lines)
    emu.patch(PTJ, name, {"status": {"conditions": [
        {"type": "Running", "status": "False"},
        {"type": "Succeeded", "status": "True", "reason": "PyTorchJobSucceeded", "message": "done"}]}})
    t.join(20)
    assert not t.is_alive() and "error" not in out, out
    assert out["value"]["metadata"]["name"] == name
    assert lines.count("[train] step=10 loss=4.2") == 1 and "worker says hi" not in lines  # rank 0 only
    assert lines[0] == f"[job] created PyTorchJob {NS}/{name}"
    # A retry of the same run attaches to the job instead of creating a second one.
    again: list[str] = []
    done = run_cluster_job(r, "run-1", api_client(emu.url), again.append, poll_seconds=0.05)
    assert done["status"]["conditions"][-1]["type"] == "Succeeded"
    assert any(line.startswith(f"[job] attached to the existing PyTorchJob {NS}/{name}") for line in again)
    assert emu.names(PTJ) == [name]
    # Delete: True once, then False (idempotent); the job is gone.
    assert delete_cluster_job(r, "run-1", api_client(emu.url)) is True
    assert emu.get(PTJ, name) is None
    assert delete_cluster_job(r, "run-1", api_client(emu.url)) is False


def test_two_waiters_on_one_run_share_one_job_and_a_failure_carries_its_reason(emu):
    r = recipe()
    name = job_name(r, "run-2")
    first_log: list[str] = []
    second_log: list[str] = []
    t1, out1 = in_thread(lambda: run_cluster_job(r, "run-2", api_client(emu.url), first_log.append, 0.05))
    wait_for(lambda: emu.get(PTJ, name), out1)
    t2, out2 = in_thread(lambda: run_cluster_job(r, "run-2", api_client(emu.url), second_log.append, 0.05))
    wait_for(lambda: any("attached" in line for line in second_log))
    emu.patch(PTJ, name, {"status": {"conditions": [
        {"type": "Failed", "status": "True", "reason": "PyTorchJobFailed",
         "message": "PyTorchJob pt-tiny is failed because 1 Master replica(s) failed."}]}})
    t1.join(20)
    t2.join(20)
    for out in (out1, out2):
        assert isinstance(out.get("error"), JobFailed), out
        assert "PyTorchJobFailed" in str(out["error"]) and "1 Master replica(s) failed" in str(out["error"])
    assert emu.names(PTJ) == [name]


def test_trainjob_waits_on_complete_and_follows_node_0_of_the_jobset(emu):
    r = recipe("trainjob")
    name = job_name(r, "run-3")
    lines: list[str] = []
    t, out = in_thread(lambda: run_cluster_job(r, "run-3", api_client(emu.url), lines.append, poll_seconds=0.05))
    job = wait_for(lambda: emu.get(TJ, name), out)
    assert job["spec"]["trainer"]["numNodes"] == 2
    node = {"pretrain.dev/job": name, "jobset.sigs.k8s.io/jobset-name": name,
            "jobset.sigs.k8s.io/replicatedjob-name": "node"}
    emu.pod(f"{name}-node-0-1-abcde", {**node, "jobset.sigs.k8s.io/job-index": "0",
                                       "batch.kubernetes.io/job-completion-index": "1"}, "node", lines=["rank 1"])
    emu.pod(f"{name}-node-0-0-fghij", {**node, "jobset.sigs.k8s.io/job-index": "0"}, "node", lines=["rank 0"],
            annotations={"batch.kubernetes.io/job-completion-index": "0"})  # the index as Kubernetes < 1.28 sets it
    wait_for(lambda: "rank 0" in lines)
    emu.patch(TJ, name, {"status": {"conditions": [{"type": "Complete", "status": "True", "reason": "JobSetCompleted",
                                                    "message": "jobset completed successfully"}]}})
    t.join(20)
    assert "error" not in out, out
    assert "rank 1" not in lines and lines[-1].endswith("succeeded: jobset completed successfully")
    emu.patch(TJ, name, {"status": {"conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
                                                    "message": "exceeded activeDeadlineSeconds"}]}})
    with pytest.raises(JobFailed, match="DeadlineExceeded: exceeded activeDeadlineSeconds"):
        run_cluster_job(r, "run-3", api_client(emu.url), lambda _: None, poll_seconds=0.05)


def test_evicted_preempted_and_oom_killed_pods_are_reported(emu):
    r = recipe()
    name = job_name(r, "run-4")
    lines: list[str] = []
    t, out = in_thread(lambda: run_cluster_job(r, "run-4", api_client(emu.url), lines.append, poll_seconds=0.05))
    wait_for(lambda: emu.get(PTJ, name), out)
    emu.pod(f"{name}-worker-0", pod_labels(name, **WORKER), "pytorch", state="terminated",
            status={"phase": "Failed", "reason": "Evicted",
                    "message": "The node was low on resource: memory. Threshold quantity: 100Mi."})
    emu.pod(f"{name}-master-0", pod_labels(name, **MASTER), "pytorch", status={"conditions": [
        {"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler",
         "message": "pretrain-training: preempted by a higher priority pod"}]})
    emu.pod("someone-else", {"pretrain.dev/job": "other", **MASTER}, "pytorch", status={"reason": "Evicted"})
    wait_for(lambda: sum("[job] pod" in line for line in lines) >= 2)
    emu.patch(PTJ, name, {"status": {"conditions": [{"type": "Failed", "status": "True", "reason": "PyTorchJobFailed",
                                                     "message": "backoff limit reached"}]}})
    t.join(20)
    assert isinstance(out.get("error"), JobFailed)
    reports = [line for line in lines if line.startswith("[job] pod")]
    assert reports == [f"[job] pod {name}-worker-0 evicted: The node was low on resource: memory. Threshold "
                       f"quantity: 100Mi.",
                       f"[job] pod {name}-master-0 preempted (PreemptionByScheduler): pretrain-training: preempted "
                       f"by a higher priority pod"]  # once each, and nothing of another job's pods


def test_job_deleted_while_waiting_fails_the_wait(emu):
    r = recipe()
    name = job_name(r, "run-5")
    t, out = in_thread(lambda: run_cluster_job(r, "run-5", api_client(emu.url), lambda _: None, poll_seconds=0.05))
    wait_for(lambda: emu.get(PTJ, name), out)
    assert delete_cluster_job(r, "run-5", api_client(emu.url))
    t.join(20)
    assert isinstance(out.get("error"), JobFailed) and "deleted" in str(out["error"])


def test_check_cluster_names_what_is_missing(emu):
    api = api_client(emu.url)
    check_cluster(recipe(), api)  # all there
    with pytest.raises(ClusterError, match="namespace elsewhere does not exist"):
        check_cluster(recipe("pytorchjob", "cluster.namespace=elsewhere"), api)
    with pytest.raises(ClusterError, match=r"Secret other-creds .* not found in namespace pretrain"):
        check_cluster(recipe("pytorchjob", "cluster.s3_secret=other-creds"), api)
    emu.secret({"AWS_ENDPOINT_URL": "http://minio:9000", "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": ""},
               name="partial")
    with pytest.raises(ClusterError, match=r"lacks key.*AWS_SECRET_ACCESS_KEY") as err:
        check_cluster(recipe("pytorchjob", "cluster.s3_secret=partial"), api)
    assert "minio:9000" not in str(err.value)  # never a value
    # Nothing is created when the check fails.
    with pytest.raises(ClusterError):
        run_cluster_job(recipe("pytorchjob", "cluster.s3_secret=partial"), "run-6", api, lambda _: None)
    assert emu.names(PTJ) == []


def test_kube_api_client_from_kubeconfig_or_a_clear_error(emu, tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    with pytest.raises(ClusterError, match="no Kubernetes API"):
        kube_api_client()
    config = {"apiVersion": "v1", "kind": "Config", "current-context": "emu",
              "clusters": [{"name": "emu", "cluster": {"server": emu.url.rstrip("/")}}],
              "users": [{"name": "me", "user": {"token": "t"}}],
              "contexts": [{"name": "emu", "context": {"cluster": "emu", "user": "me"}}]}
    (tmp_path / "config").write_text(json.dumps(config))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "config"))
    check_cluster(recipe(), kube_api_client())


# --- What kmock cannot answer: a stand-in API server with real Kubernetes Status bodies --------------------------


def status(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> tuple[int, dict]:
    return code, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
                  "reason": reason, "details": details or {}, "code": code}


FORBIDDEN_NS = status(403, "Forbidden", 'namespaces "pretrain" is forbidden: User "system:serviceaccount:kubeflow:'
                      'pipeline-runner" cannot get resource "namespaces" in API group "" at the cluster scope',
                      {"name": "pretrain", "kind": "namespaces"})
SECRET_OK = (200, {"kind": "Secret", "apiVersion": "v1", "metadata": {"name": "pretrain-s3", "namespace": NS},
                   "data": {k: base64.b64encode(b"x").decode() for k in S3_KEYS}})


class StandIn:
    """Answers (method, path regex) -> (code, JSON body); records every request."""

    def __init__(self, routes: dict[tuple[str, str], tuple[int, Any]]) -> None:
        self.routes, self.seen = routes, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                outer.seen.append((self.command, self.path, body))
                path = self.path.split("?")[0]
                code, payload = next((answer for (method, pattern), answer in outer.routes.items()
                                      if method == self.command and re.fullmatch(pattern, path)),
                                     status(500, "InternalError", f"no route for {self.command} {self.path}"))
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "text/plain" if isinstance(payload, bytes) else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stand_in() -> Iterator[Callable[[dict], StandIn]]:
    made: list[StandIn] = []

    def make(routes: dict) -> StandIn:
        made.append(StandIn(routes))
        return made[-1]

    yield make
    for s in made:
        s.close()


JOBS = rf"/apis/kubeflow.org/v1/namespaces/{NS}/pytorchjobs"


def test_403_names_the_missing_rbac_rule(stand_in):
    r = recipe()
    server = stand_in({
        ("GET", f"/api/v1/namespaces/{NS}"): FORBIDDEN_NS,  # a namespaced Role: skipped, the Secret tells
        ("GET", f"/api/v1/namespaces/{NS}/secrets/pretrain-s3"): SECRET_OK,
        ("POST", JOBS): status(403, "Forbidden", 'pytorchjobs.kubeflow.org is forbidden: User "system:serviceaccount:'
                               'kubeflow:pipeline-runner" cannot create resource "pytorchjobs" in API group '
                               '"kubeflow.org" in the namespace "pretrain"',
                               {"group": "kubeflow.org", "kind": "pytorchjobs"}),
        ("DELETE", JOBS + "/.*"): status(403, "Forbidden", "cannot delete resource"),
    })
    with pytest.raises(ClusterError) as err:
        run_cluster_job(r, "run-1", api_client(server.url), lambda _: None, poll_seconds=0.01)
    text = str(err.value)
    assert "forbidden to create pytorchjobs.kubeflow.org in namespace pretrain" in text
    assert "verbs ['create']" in text and "apiGroups ['kubeflow.org']" in text and "pipeline-runner" in text
    with pytest.raises(ClusterError, match=r"forbidden to delete pytorchjobs\.kubeflow\.org in namespace pretrain"):
        delete_cluster_job(r, "run-1", api_client(server.url))


def test_403_on_the_secret_names_the_get_secrets_rule(stand_in):
    server = stand_in({
        ("GET", f"/api/v1/namespaces/{NS}"): FORBIDDEN_NS,
        ("GET", f"/api/v1/namespaces/{NS}/secrets/pretrain-s3"): status(403, "Forbidden", "cannot get secrets"),
    })
    with pytest.raises(ClusterError, match=r"forbidden to get secrets in namespace pretrain.*verbs \['get'\]"):
        check_cluster(recipe(), api_client(server.url))


def test_real_409_attaches_and_404_namespace_or_kind_are_clear(stand_in):
    r = recipe()
    name = job_name(r, "run-1")
    finished = {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob",
                "metadata": {"name": name, "namespace": NS, "creationTimestamp": "2026-01-01T00:00:00Z",
                             "labels": {"pretrain.dev/recipe": "tiny"}},
                "status": {"conditions": [{"type": "Succeeded", "status": "True", "reason": "PyTorchJobSucceeded"}]}}
    common = {("GET", f"/api/v1/namespaces/{NS}"): FORBIDDEN_NS,
              ("GET", f"/api/v1/namespaces/{NS}/secrets/pretrain-s3"): SECRET_OK,
              ("GET", f"/api/v1/namespaces/{NS}/pods"): (200, {"kind": "PodList", "items": []})}
    server = stand_in({**common,
                       ("POST", JOBS): status(409, "AlreadyExists", f'pytorchjobs.kubeflow.org "{name}" already exists',
                                              {"name": name, "group": "kubeflow.org", "kind": "pytorchjobs"}),
                       ("GET", f"{JOBS}/{name}"): (200, finished)})
    lines: list[str] = []
    assert run_cluster_job(r, "run-1", api_client(server.url), lines.append, poll_seconds=0.01) == finished
    assert any("attached to the existing PyTorchJob" in line for line in lines)
    assert [m for m, *_ in server.seen].count("POST") == 1
    server = stand_in({**common, ("POST", JOBS): status(404, "NotFound", f'namespaces "{NS}" not found',
                                                        {"name": NS, "kind": "namespaces"})})
    with pytest.raises(ClusterError, match="namespace pretrain does not exist"):
        run_cluster_job(r, "run-1", api_client(server.url), lambda _: None)
    server = stand_in({**common, ("POST", JOBS): (404, b"404 page not found\n")})
    with pytest.raises(ClusterError, match=r"does not serve kubeflow\.org/pytorchjobs .*Training Operator"):
        run_cluster_job(r, "run-1", api_client(server.url), lambda _: None)


def test_unreachable_api_server_is_a_clear_error():
    with pytest.raises(ClusterError, match="cannot reach the Kubernetes API server"):
        cfg = client.Configuration()
        cfg.host = "http://127.0.0.1:9"
        cfg.retries = 0
        check_cluster(recipe(), client.ApiClient(cfg))


def test_delete_of_a_local_launcher_has_nothing_to_do():
    assert delete_cluster_job(load_recipe("tiny", []), "run-1", api_client("http://127.0.0.1:9")) is False
