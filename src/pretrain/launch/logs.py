"""Node 0's log, followed while a cluster job runs, and the pods of the job that were evicted, preempted or
OOM-killed, reported as they happen."""

from __future__ import annotations

import contextlib
import json
import math
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from pretrain.launch.api import ClusterError, call

Log = Callable[[str], None]
LOG_DRAIN_SECONDS = 30.0  # after the job ends: how long to wait for the rest of node 0's log


def _labels_match(pod: dict[str, Any], selector: dict[str, str]) -> bool:
    """Labels, or annotations where the label is absent: Kubernetes before 1.28 records a Job pod's
    completion index (a TrainJob node's rank) only as an annotation."""
    meta = pod.get("metadata", {})
    labels, notes = meta.get("labels") or {}, meta.get("annotations") or {}
    return all(labels.get(k, notes.get(k)) == v for k, v in selector.items())


def _disruption(pod: dict[str, Any]) -> str | None:
    """Why a pod was evicted, preempted or killed, as the kubelet and scheduler record it; None if it wasn't."""
    status = pod.get("status") or {}
    if status.get("reason") == "Evicted":
        return f"evicted: {status.get('message', '')}".rstrip(": ")
    for cond in status.get("conditions") or []:
        if cond.get("type") == "DisruptionTarget" and cond.get("status") == "True":
            verb = "preempted" if "Preemption" in (cond.get("reason") or "") else "disrupted"
            return f"{verb} ({cond.get('reason', '')}): {cond.get('message', '')}".rstrip(": ")
    for cs in status.get("containerStatuses") or []:
        for state in (cs.get("state") or {}, cs.get("lastState") or {}):
            if (state.get("terminated") or {}).get("reason") == "OOMKilled":
                return f"container {cs.get('name')} OOMKilled (out of memory: raise train.resources.memory_gb)"
    return None


class Rank0Logs:
    """Follows node 0's log in a thread (pods/log with follow=true) and hands its lines to ``log`` on ``poll``;
    follows again when node 0's pod is replaced or its container restarts. Reports disrupted pods of the job."""

    def __init__(self, api_client: Any, namespace: str, job_selector: dict[str, str], rank0: dict[str, str],
                 container: str, log: Log) -> None:
        from kubernetes import client

        self.core = client.CoreV1Api(api_client)
        self.namespace, self.job_selector, self.rank0, self.container, self.log = (
            namespace, job_selector, rank0, container, log)
        self.lines: queue.Queue[str] = queue.Queue()
        self.thread: threading.Thread | None = None
        self.response: Any = None
        self.followed: dict[tuple[str, int], float] = {}  # (pod uid, restarts) -> last time a line arrived
        self.reported: set[tuple[str, str]] = set()
        self.closed = False
        self.disabled = False  # pods cannot be read (RBAC): the job is still waited on, without its log

    def _pods(self) -> list[dict[str, Any]]:
        selector = ",".join(f"{k}={v}" for k, v in self.job_selector.items())
        resp = call(self.core.list_namespaced_pod, "list", "pods", self.namespace, self.namespace,
                     label_selector=selector, _preload_content=False)
        pods = json.loads(resp.data).get("items") or []
        return [p for p in pods if _labels_match(p, self.job_selector)]

    def poll(self) -> None:
        """Report new disruptions, start following node 0 when there is something new to follow, flush lines."""
        if self.disabled:
            return
        try:
            pods = self._pods()
        except ClusterError as err:
            self.disabled = True
            self.log(f"[job] cannot follow node 0's log (waiting on the job without it): {err}")
            return
        for pod in pods:
            meta = pod.get("metadata", {})
            why = _disruption(pod)
            if why and (meta.get("uid", meta.get("name")), why) not in self.reported:
                self.reported.add((meta.get("uid", meta.get("name")), why))
                self.log(f"[job] pod {meta.get('name')} {why}")
        rank0 = sorted((p for p in pods if _labels_match(p, self.rank0)),
                       key=lambda p: p.get("metadata", {}).get("creationTimestamp") or "")
        if rank0 and (self.thread is None or not self.thread.is_alive()):
            self._follow(rank0[-1])
        self.flush()

    def _follow(self, pod: dict[str, Any]) -> None:
        statuses = [c for c in (pod.get("status") or {}).get("containerStatuses") or []
                    if c.get("name") == self.container]
        if not statuses or not ({"running", "terminated"} & set(statuses[0].get("state") or {})):
            return  # not started yet: nothing to read
        meta = pod["metadata"]
        key = (meta.get("uid", meta["name"]), int(statuses[0].get("restartCount") or 0))
        running = "running" in (statuses[0].get("state") or {})
        if key in self.followed and not running:
            return  # read to its end already
        since = None
        if key in self.followed:  # the stream broke while the container runs: resume near where it stopped
            since = max(1, math.ceil(time.time() - self.followed[key]) + 1)
        self.followed.setdefault(key, time.time())
        self.thread = threading.Thread(target=self._read, args=(meta["name"], key, since), daemon=True)
        self.thread.start()

    def _read(self, pod: str, key: tuple[str, int], since: int | None) -> None:
        try:
            kwargs: dict[str, Any] = {"container": self.container, "follow": True, "_preload_content": False}
            if since is not None:
                kwargs["since_seconds"] = since
            self.response = self.core.read_namespaced_pod_log(pod, self.namespace, **kwargs)
            rest = b""
            for chunk in self.response.stream(64 * 1024):
                if self.closed:
                    break
                rest += chunk
                *lines, rest = rest.split(b"\n")
                for line in lines:
                    self.lines.put(line.decode("utf-8", "replace"))
                self.followed[key] = time.time()
            if rest:
                self.lines.put(rest.decode("utf-8", "replace"))
        except Exception as err:  # a broken log stream must never fail the job
            if not self.closed:
                self.lines.put(f"[job] log stream of {pod} ended: {err}")

    def pump(self, seconds: float) -> None:
        """Hand lines to ``log`` as they arrive, for ``seconds`` (the wait between two polls of the job)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                self.log(self.lines.get(timeout=left))
            except queue.Empty:
                return

    def flush(self) -> None:
        while True:
            try:
                self.log(self.lines.get_nowait())
            except queue.Empty:
                return

    def finish(self, timeout: float = LOG_DRAIN_SECONDS) -> None:
        """The job has ended: give node 0's stream a moment to deliver its last lines, then flush them."""
        with contextlib.suppress(Exception):  # the job's outcome matters more than its last log lines
            self.poll()
        if self.thread is not None:
            self.thread.join(timeout)
        self.flush()

    def close(self) -> None:
        self.closed = True
        if self.response is not None:
            with contextlib.suppress(Exception):
                self.response.close()
