"""Run a rendered training job on a cluster through the official ``kubernetes`` client.

Create it under its deterministic name, or attach to the one already there (a KFP retry of the train step
must not launch a second job); wait on its conditions for as long as it runs; stream node 0's log and
report pods evicted or preempted; fail with the job's own reason. Everything the cluster refuses (RBAC,
a missing namespace, Secret or CRD) is a ``ClusterError`` that says what to grant or create.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from pretrain.config import Recipe, RecipeError
from pretrain.launch import pytorchjob, trainjob
from pretrain.launch.api import ClusterError, call, explain, kube_api_client
from pretrain.launch.logs import Log, Rank0Logs
from pretrain.launch.render import S3_KEYS, job_name, render_job

__all__ = ["ClusterError", "JobFailed", "check_cluster", "delete_cluster_job", "kube_api_client", "run_cluster_job"]
KINDS: dict[str, ModuleType] = {"pytorchjob": pytorchjob, "trainjob": trainjob}
MAX_API_FAILURES = 30  # consecutive failed polls (server errors, no connection) before waiting gives up


class JobFailed(RuntimeError):
    """The training job failed; the message carries the job condition's reason and message."""


def kind_of(recipe: Recipe) -> ModuleType:
    """The module (pytorchjob or trainjob) that knows the recipe's job kind."""
    try:
        return KINDS[recipe.train.launcher]
    except KeyError:
        raise RecipeError(f"train.launcher is {recipe.train.launcher!r}: only pytorchjob and trainjob run as "
                          f"cluster jobs") from None


def check_cluster(recipe: Recipe, api_client: Any) -> None:
    """Before anything is created: the namespace exists, and so does the storage Secret with its three keys."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    ns, secret = recipe.cluster.namespace, recipe.cluster.s3_secret
    core = client.CoreV1Api(api_client)
    try:
        try:
            core.read_namespace(ns)
        except ApiException as err:
            if err.status == 404:
                raise ClusterError(f"namespace {ns} does not exist (cluster.namespace): create it "
                                   f"(kubectl apply -k manifests/base) or set cluster.namespace") from None
            if err.status != 403:  # a namespaced Role cannot read Namespace objects: the Secret check tells
                raise
        try:
            found = core.read_namespaced_secret(secret, ns)
        except ApiException as err:
            if err.status == 404:
                raise ClusterError(f"Secret {secret} (cluster.s3_secret) not found in namespace {ns}: create it "
                                   f"with keys {', '.join(S3_KEYS)} (manifests/base/secret-template.yaml)") from None
            raise explain(err, "get", "secrets", ns) from None
    except HTTPError as err:
        raise ClusterError(f"cannot reach the Kubernetes API server at {api_client.configuration.host}: "
                           f"{err}") from None
    data = found.data or {}
    missing = [k for k in S3_KEYS if not data.get(k)]
    if missing:
        raise ClusterError(f"Secret {secret} in namespace {ns} lacks key(s) {', '.join(missing)} (needs "
                           f"{', '.join(S3_KEYS)}; an empty value counts as missing)")


def _create_or_attach(api_client: Any, kind: ModuleType, body: dict[str, Any], log: Log) -> dict[str, Any]:
    """Create the job; when one of that name exists (409), attach to it: a retry never launches twice."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    custom = client.CustomObjectsApi(api_client)
    ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
    resource = f"{kind.GROUP}/{kind.PLURAL}"
    try:
        job = call(custom.create_namespaced_custom_object, "create", resource, ns,
                    kind.GROUP, kind.VERSION, ns, kind.PLURAL, body)
        log(f"[job] created {kind.KIND} {ns}/{name}")
        return job
    except ApiException as err:
        if err.status != 409:
            raise
    job = call(custom.get_namespaced_custom_object, "get", resource, ns, kind.GROUP, kind.VERSION, ns,
                kind.PLURAL, name)
    theirs = job.get("metadata", {}).get("labels", {}).get("pretrain.dev/recipe")
    log(f"[job] attached to the existing {kind.KIND} {ns}/{name} (created "
        f"{job.get('metadata', {}).get('creationTimestamp', '?')})")
    if theirs != body["metadata"]["labels"]["pretrain.dev/recipe"]:
        log(f"[job] warning: {name} was created for recipe {theirs!r}, not "
            f"{body['metadata']['labels']['pretrain.dev/recipe']!r}")
    return job


def run_cluster_job(recipe: Recipe, run_id: str, api_client: Any = None, log: Log = print,
                    poll_seconds: float = 10) -> dict[str, Any]:
    """Create the recipe's training job (or attach to it), wait until it ends, stream node 0's log into
    ``log``. Returns the finished job; raises JobFailed with the job's reason. No timeout: training takes
    as long as it takes (the pipeline's cancel deletes the job through its exit handler)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    api_client = api_client or kube_api_client()
    kind = kind_of(recipe)
    check_cluster(recipe, api_client)
    body = render_job(recipe, run_id)
    ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
    job = _create_or_attach(api_client, kind, body, log)
    custom = client.CustomObjectsApi(api_client)
    logs = Rank0Logs(api_client, ns, {"pretrain.dev/job": name}, kind.rank0_selector(job), kind.CONTAINER, log)
    failures = 0
    try:
        while True:
            try:
                logs.poll()
            except (ApiException, HTTPError) as err:
                log(f"[job] cannot read the pods of {name} yet: {getattr(err, 'reason', err)}")
            done = kind.outcome(job)
            if done is not None:
                logs.finish()
                succeeded, reason, message = done
                if not succeeded:
                    raise JobFailed(f"{kind.KIND} {ns}/{name} failed: {reason or 'Failed'}: {message}".rstrip(": "))
                log(f"[job] {kind.KIND} {ns}/{name} succeeded: {message or reason}")
                return job
            logs.pump(poll_seconds)
            try:
                job = call(custom.get_namespaced_custom_object, "get", f"{kind.GROUP}/{kind.PLURAL}", ns,
                            kind.GROUP, kind.VERSION, ns, kind.PLURAL, name)
                failures = 0
            except ApiException as err:
                if err.status == 404:
                    raise JobFailed(f"{kind.KIND} {ns}/{name} was deleted while training ran") from None
                if err.status < 500 and err.status != 429:
                    raise
                failures += 1
            except HTTPError:
                failures += 1
            if failures >= MAX_API_FAILURES:
                raise ClusterError(f"lost the Kubernetes API server: {failures} failed polls of {ns}/{name} in a row")
    finally:
        logs.close()


def delete_cluster_job(recipe: Recipe, run_id: str, api_client: Any = None) -> bool:
    """Delete the run's training job and, in the background, its pods. Idempotent: False when it was absent."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    if recipe.train.launcher not in KINDS:
        return False
    kind = kind_of(recipe)
    api_client = api_client or kube_api_client()
    ns, name = recipe.cluster.namespace, job_name(recipe, run_id)
    custom = client.CustomObjectsApi(api_client)
    try:
        custom.delete_namespaced_custom_object(kind.GROUP, kind.VERSION, ns, kind.PLURAL, name,
                                               propagation_policy="Background")
    except ApiException as err:
        if err.status == 404:
            return False
        raise explain(err, "delete", f"{kind.GROUP}/{kind.PLURAL}", ns) from None
    return True
