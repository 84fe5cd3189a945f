"""Access to the Kubernetes API server: a client from the pod's service account or the kubeconfig, and
what the server refuses (RBAC, a missing namespace or kind) turned into errors that say what to grant or create.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from pretrain.config import RecipeError


class ClusterError(RecipeError):
    """The cluster refused the request or lacks what the job needs (RBAC, namespace, Secret, CRD)."""


def kube_api_client() -> Any:
    """An ``ApiClient`` from the pod's service account when in a cluster, else from the kubeconfig."""
    from kubernetes import client, config

    cfg = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=cfg)
        return client.ApiClient(cfg)
    except config.ConfigException:
        pass
    try:
        # KUBECONFIG read now: the client captures it once, at import time
        return config.new_client_from_config(config_file=os.environ.get("KUBECONFIG") or None)
    except (config.ConfigException, OSError) as err:
        raise ClusterError(f"no Kubernetes API to talk to: not in a pod with a service account, and no usable "
                           f"kubeconfig (KUBECONFIG or ~/.kube/config): {err}") from None


def _status(err: Any) -> dict[str, Any]:
    """The Kubernetes Status object an ApiException carries, or {} when its body is not one."""
    try:
        body = json.loads(err.body or "{}")
    except (TypeError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def explain(err: Any, verb: str, resource: str, namespace: str) -> Exception:
    """A ClusterError for what the API server refused, naming the RBAC rule or the missing object."""
    status = _status(err)
    said = status.get("message") or (err.reason or "").strip()
    if err.status == 403:
        group, _, plural = resource.rpartition("/")
        return ClusterError(
            f"forbidden to {verb} {plural}{'.' + group if group else ''} in namespace {namespace}: the service "
            f"account needs a Role rule apiGroups [{group!r}] resources [{plural!r}] verbs [{verb!r}] in "
            f"{namespace} (manifests/base/rbac.yaml). The API server said: {said}")
    if err.status == 404 and status.get("details", {}).get("kind") == "namespaces":
        return ClusterError(f"namespace {namespace} does not exist (cluster.namespace): create it "
                            f"(kubectl apply -k manifests/base) or set cluster.namespace")
    if err.status == 404 and verb in ("create", "list"):
        return ClusterError(f"the API server does not serve {resource} (is its operator installed? "
                            f"PyTorchJob: Training Operator v1.9; TrainJob: Kubeflow Trainer v2.3): {said}")
    return err


def call(fn: Callable[..., Any], verb: str, resource: str, namespace: str, *args: Any, **kwargs: Any) -> Any:
    """Call the client; 403 and a missing namespace or kind become a ClusterError, the rest passes through."""
    from kubernetes.client.exceptions import ApiException

    try:
        return fn(*args, **kwargs)
    except ApiException as err:
        explained = explain(err, verb, resource, namespace)
        if explained is err:
            raise
        raise explained from None
