"""Kubeflow Trainer v2 ``trainer.kubeflow.org/v1alpha1`` TrainJob on the upstream ``torch-distributed``
ClusterTrainingRuntime: the manifest and how to read its state. Pinned to Trainer v2.3.0.

The ``trainer`` block sets image, command, nodes, processes per node, resources and env of the runtime's
``node`` container; the pod-level settings go in ``runtimePatches``, which v2.3.0 limits to pod metadata
(labels, annotations) and serviceAccountName, volumes, securityContext, nodeSelector, affinity,
tolerations, schedulingGates, imagePullSecrets, terminationGracePeriodSeconds, and per container
volumeMounts and securityContext (env of ``node`` only through ``trainer.env``). There is no
priorityClassName among them: a TrainJob's pods get the runtime's priority (none upstream).
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

GROUP, VERSION, PLURAL, KIND = "trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob"
RUNTIME = "torch-distributed"  # the upstream ClusterTrainingRuntime
NODE = "node"  # the runtime's replicated job and its trainer container
CONTAINER = NODE
PATCH_MANAGER = "pretrain.dev/launcher"
JOBSET_NAME = "jobset.sigs.k8s.io/jobset-name"  # the JobSet is named after the TrainJob
REPLICATED_JOB = "jobset.sigs.k8s.io/replicatedjob-name"
JOB_INDEX = "jobset.sigs.k8s.io/job-index"
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"  # = PET_NODE_RANK


def pod_patch(spec: JobSpec) -> dict[str, Any]:
    """The node pod's settings that a TrainJob can carry (see the module docstring)."""
    pod: dict[str, Any] = {
        "securityContext": pod_security_context(),
        "volumes": [shm_volume(spec)],
        "containers": [{"name": NODE, "volumeMounts": [shm_mount()],
                        "securityContext": container_security_context()}],
    }
    if spec.node_selector:
        pod["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod["tolerations"] = [dict(t) for t in spec.tolerations]
    if spec.service_account:
        pod["serviceAccountName"] = spec.service_account
    return pod


def render(spec: JobSpec) -> dict[str, Any]:
    """The TrainJob for ``spec``. Its trainer env must not set PET_* (the torch plugin owns them)."""

    def labels() -> dict[str, str]:  # a fresh copy each time: no shared objects (YAML anchors) in the output
        return dict(spec.labels)

    node_patch = {"name": NODE, "template": {"metadata": {"labels": labels()}, "spec": {"template": {
        "metadata": {"labels": labels(), "annotations": dict(spec.annotations)}, "spec": pod_patch(spec)}}}}
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": KIND,
        "metadata": {"name": spec.name, "namespace": spec.namespace, "labels": labels(),
                     "annotations": dict(spec.annotations)},
        "spec": {
            "runtimeRef": {"apiGroup": GROUP, "kind": "ClusterTrainingRuntime", "name": RUNTIME},
            "trainer": {"image": spec.image, "command": spec.command, "numNodes": spec.nnodes,
                        "numProcPerNode": spec.nproc_per_node, "resourcesPerNode": resources(spec),
                        # (the Training Operator adds PYTHONUNBUFFERED to a PyTorchJob itself; Trainer does not)
                        "env": [*env(spec), {"name": "PYTHONUNBUFFERED", "value": "1"}]},
            "runtimePatches": [{"manager": PATCH_MANAGER, "trainingRuntimeSpec": {"template": {
                "metadata": {"labels": labels()}, "spec": {"replicatedJobs": [node_patch]}}}}],
        },
    }


def rank0_selector(job: dict[str, Any]) -> dict[str, str]:
    """Labels of node 0's pod: the JobSet's ``node`` job, its completion index 0 (PET_NODE_RANK=0)."""
    return {JOBSET_NAME: job["metadata"]["name"], REPLICATED_JOB: NODE, JOB_INDEX: "0", COMPLETION_INDEX: "0"}


def outcome(job: dict[str, Any]) -> tuple[bool, str, str] | None:
    """(succeeded, reason, message) once the job has finished; None while it runs. v2.3.0 conditions:
    Complete, Failed (and Suspended), metav1.Condition with status "True"."""
    for cond in job.get("status", {}).get("conditions") or []:
        if cond.get("status") == "True" and cond.get("type") in ("Complete", "Failed"):
            return cond["type"] == "Complete", cond.get("reason", ""), cond.get("message", "")
    return None
