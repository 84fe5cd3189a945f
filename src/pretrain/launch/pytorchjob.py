"""Training Operator ``kubeflow.org/v1`` PyTorchJob: the manifest and how to read its state.

Master + Worker replicas (nnodes - 1 workers), or, with an elastic policy, workers only: the operator then
points torchrun's c10d rendezvous at ``<name>-worker-0`` and the Master (whose fixed MASTER_ADDR and node
rank would pin the ranks) must not exist. Pinned to training-operator v1.9.0.
"""

from __future__ import annotations

from typing import Any

from pretrain.launch.render import (
    JobSpec,
    container_security_context,
    env,
    pod_security_context,
    resources,
    shm_mount,
    shm_volume,
)

GROUP, VERSION, PLURAL, KIND = "kubeflow.org", "v1", "pytorchjobs", "PyTorchJob"
CONTAINER = "pytorch"  # the operator requires a container of this name
PORT = 23456  # the operator's default "pytorchjob-port": MASTER_PORT, and the elastic rendezvous port
BACKOFF_LIMIT = 3  # pod restarts before the job fails; training resumes from its last checkpoint
REPLICA_TYPE = "training.kubeflow.org/replica-type"
REPLICA_INDEX = "training.kubeflow.org/replica-index"
JOB_NAME = "training.kubeflow.org/job-name"


def pod_template(spec: JobSpec, metrics: bool = False) -> dict[str, Any]:
    """One node's pod: PSS-restricted, Guaranteed resources, /dev/shm, the node pool, Secret by reference.
    ``metrics``: the pod may hold rank 0, which serves /metrics: its port is named ``metrics`` for the
    PodMonitor (only there, so the other nodes do not show as targets that are down)."""
    pod: dict[str, Any] = {
        "securityContext": pod_security_context(),
        "automountServiceAccountToken": False,  # training never talks to the API server
        "containers": [{
            "name": CONTAINER,
            "image": spec.image,
            "command": spec.command,
            "env": env(spec),
            "resources": resources(spec),
            "ports": [{"name": "pytorchjob-port", "containerPort": PORT, "protocol": "TCP"}]
            + ([{"name": "metrics", "containerPort": spec.metrics_port, "protocol": "TCP"}]
               if metrics and spec.metrics_port else []),
            "volumeMounts": [shm_mount()],
            "securityContext": container_security_context(),
        }],
        "volumes": [shm_volume(spec)],
    }
    if spec.node_selector:
        pod["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod["tolerations"] = [dict(t) for t in spec.tolerations]
    if spec.service_account:
        pod["serviceAccountName"] = spec.service_account
    if spec.priority_class:
        pod["priorityClassName"] = spec.priority_class
    return {"metadata": {"labels": dict(spec.labels), "annotations": dict(spec.annotations)}, "spec": pod}


def render(spec: JobSpec) -> dict[str, Any]:
    """The PyTorchJob for ``spec`` (see the module docstring for its shape)."""
    def replica(count: int, metrics: bool = False) -> dict[str, Any]:
        return {"replicas": count, "restartPolicy": "OnFailure", "template": pod_template(spec, metrics)}

    if spec.elastic:  # rank 0 may land on any worker
        replicas = {"Worker": replica(spec.nnodes, metrics=True)}
    else:
        replicas = {"Master": replica(1, metrics=True)}
        if spec.nnodes > 1:
            replicas["Worker"] = replica(spec.nnodes - 1)
    body: dict[str, Any] = {
        "nprocPerNode": str(spec.nproc_per_node),
        # Running: when the job ends, pods still running (a hung peer) are removed so their GPUs are freed;
        # finished pods stay for their logs until the job is deleted.
        "runPolicy": {"cleanPodPolicy": "Running", "backoffLimit": BACKOFF_LIMIT},
        "pytorchReplicaSpecs": replicas,
    }
    if spec.elastic:
        body["elasticPolicy"] = {"rdzvBackend": "c10d", "minReplicas": spec.elastic_min,
                                 "maxReplicas": spec.elastic_max, "maxRestarts": spec.elastic_restarts}
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND,
            "metadata": {"name": spec.name, "namespace": spec.namespace, "labels": dict(spec.labels),
                         "annotations": dict(spec.annotations)},
            "spec": body}


def rank0_selector(job: dict[str, Any]) -> dict[str, str]:
    """Labels of the pod that runs node rank 0: the Master, or with an elastic policy worker 0 (the rendezvous
    host; ranks are assigned at rendezvous there, so rank 0 is usually but not always on it)."""
    name = job["metadata"]["name"]
    role = "worker" if job.get("spec", {}).get("elasticPolicy") else "master"
    return {JOB_NAME: name, REPLICA_TYPE: role, REPLICA_INDEX: "0"}


def outcome(job: dict[str, Any]) -> tuple[bool, str, str] | None:
    """(succeeded, reason, message) once the job has finished; None while it runs. The operator sets
    conditions Created, Running, Restarting, Succeeded, Failed (status "True" for the current one)."""
    for cond in job.get("status", {}).get("conditions") or []:
        if cond.get("status") == "True" and cond.get("type") in ("Succeeded", "Failed"):
            return cond["type"] == "Succeeded", cond.get("reason", ""), cond.get("message", "")
    return None
