"""A cluster training job as a pure function of the resolved recipe: no I/O, no Kubernetes client.

``job_spec`` resolves everything the manifests need (image, nodes, resources, node pool, Secret, labels);
``render_job`` turns it into a PyTorchJob or a TrainJob. ``pretrain job`` prints the result and the
pipeline's train step creates it, so both see the very same object.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from pretrain.config import Recipe, RecipeError

# The storage Secret's keys, passed to the pods by secretKeyRef (never as values).
S3_KEYS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
# The images run as this user (images/Dockerfile.*: USER 1000:1000).
RUN_AS_USER = 1000
SHM_VOLUME = "dshm"
NAME_MAX = 40  # leaves room for what the operators append: <name>-worker-12, <name>-node-0-3-abcde
CLUSTER_LAUNCHERS = ("pytorchjob", "trainjob")


def job_name(recipe: Recipe, run_id: str) -> str:
    """``pt-<recipe name>-<sha256(run_id)[:8]>``: the same run (a KFP retry) always gets the same name, so it
    attaches to its job instead of launching a second one. A DNS-1035 label of at most 40 characters."""
    digest = hashlib.sha256(run_id.encode()).hexdigest()[:8]
    stem = re.sub(r"[^a-z0-9]+", "-", recipe.name.lower()).strip("-")
    stem = stem[: NAME_MAX - len("pt--") - len(digest)].rstrip("-")
    return f"pt-{stem}-{digest}" if stem else f"pt-{digest}"


def _label_value(text: str) -> str:
    """A valid label value (<= 63 characters, alphanumeric at both ends) carrying ``text`` as far as it can."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", text)[:63].strip("-_.")


@dataclass(frozen=True)
class JobSpec:
    """Everything a training job's manifests need, resolved from the recipe (see ``job_spec``)."""

    launcher: str
    name: str
    namespace: str
    run_id: str
    image: str
    config_url: str
    nnodes: int
    nproc_per_node: int
    cpu: float
    memory_gb: float
    gpus: int
    shm_gb: float
    omp_threads: int
    secret: str
    service_account: str | None
    priority_class: str | None
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, str]] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    elastic_min: int | None = None  # pytorchjob only: min..max nodes, restarts
    elastic_max: int | None = None
    elastic_restarts: int | None = None
    metrics_port: int | None = None  # rank 0 serves /metrics here (observe.metrics_port); None: no port

    @property
    def elastic(self) -> bool:
        return self.elastic_min is not None

    @property
    def command(self) -> list[str]:
        """torchrun with no rendezvous flags: both operators inject them as ``PET_*`` environment variables
        (PyTorchJob: PET_NNODES, PET_NODE_RANK, PET_MASTER_ADDR/PORT, elastic PET_RDZV_*; TrainJob's torch
        plugin: PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK, PET_MASTER_ADDR/PORT), which torchrun reads as
        its defaults. A flag here would override them (e.g. the elastic ``PET_NNODES=min:max``)."""
        return ["python", "-m", "torch.distributed.run", "-m", "pretrain.train", "--config", self.config_url]


def job_spec(recipe: Recipe, run_id: str = "manual") -> JobSpec:
    """Resolve the recipe's training job: image, node pool (GPU pool when the nodes ask for GPUs), resources,
    Secret, labels. Pure: the recipe was validated (GPUs fit the pool, s3:// run root, elastic bounds)."""
    train, cluster = recipe.train, recipe.cluster
    res = train.resources
    pool = cluster.gpu_pool if res.gpus else cluster.cpu_pool
    name = job_name(recipe, run_id)
    elastic = train.elastic
    return JobSpec(
        launcher=train.launcher, name=name, namespace=cluster.namespace, run_id=run_id,
        image=cluster.training_image(res.gpus), config_url=recipe.url("recipe.yaml"),
        nnodes=train.nnodes, nproc_per_node=train.nproc_per_node,
        cpu=res.cpu, memory_gb=res.memory_gb, gpus=res.gpus, shm_gb=res.shm_gb,
        omp_threads=max(1, int(res.cpu // train.nproc_per_node)),
        secret=cluster.s3_secret, service_account=cluster.train_service_account,
        priority_class=cluster.priority_class,
        node_selector=dict(pool.node_selector),
        tolerations=[t.model_dump(exclude_none=True) for t in pool.tolerations],
        metrics_port=recipe.observe.metrics_port,
        labels={"app.kubernetes.io/part-of": "pretrain", "app.kubernetes.io/component": "train",
                "pretrain.dev/recipe": _label_value(recipe.name), "pretrain.dev/job": name},
        annotations={"pretrain.dev/run-id": run_id},
        elastic_min=elastic.min_nodes if elastic else None, elastic_max=elastic.max_nodes if elastic else None,
        elastic_restarts=elastic.max_restarts if elastic else None,
    )


def cpu_quantity(cpu: float) -> str:
    """Whole cores as ``"4"``, fractions in millicores (``"1500m"``)."""
    return str(int(cpu)) if float(cpu).is_integer() else f"{round(cpu * 1000)}m"


def memory_quantity(gb: float) -> str:
    """Whole GiB as ``"8Gi"``, fractions in MiB (``"512Mi"``)."""
    return f"{int(gb)}Gi" if float(gb).is_integer() else f"{round(gb * 1024)}Mi"


def resources(spec: JobSpec) -> dict[str, Any]:
    """requests = limits: the Guaranteed QoS class, so training is the last thing a node evicts."""
    amounts = {"cpu": cpu_quantity(spec.cpu), "memory": memory_quantity(spec.memory_gb)}
    if spec.gpus:
        amounts["nvidia.com/gpu"] = str(spec.gpus)
    return {"requests": dict(amounts), "limits": dict(amounts)}


def env(spec: JobSpec) -> list[dict[str, Any]]:
    """Threads per process from the CPU request, and the storage credentials from the Secret by reference."""
    out: list[dict[str, Any]] = [{"name": "OMP_NUM_THREADS", "value": str(spec.omp_threads)}]
    out += [{"name": key, "valueFrom": {"secretKeyRef": {"name": spec.secret, "key": key}}} for key in S3_KEYS]
    return out


def pod_security_context() -> dict[str, Any]:
    """Pod Security Standard "restricted": non-root, the runtime's default seccomp profile."""
    return {"runAsNonRoot": True, "runAsUser": RUN_AS_USER, "runAsGroup": RUN_AS_USER, "fsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"}}


def container_security_context() -> dict[str, Any]:
    """Pod Security Standard "restricted" for a container: no privilege escalation, no capabilities."""
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"}}


def shm_volume(spec: JobSpec) -> dict[str, Any]:
    """The container runtime's 64 MiB /dev/shm is too small for NCCL and DataLoader workers."""
    return {"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": memory_quantity(spec.shm_gb)}}


def shm_mount() -> dict[str, Any]:
    return {"name": SHM_VOLUME, "mountPath": "/dev/shm"}


def render_job(recipe: Recipe, run_id: str = "manual") -> dict[str, Any]:
    """The PyTorchJob or TrainJob that runs ``recipe``'s training (``train.launcher``)."""
    launcher = recipe.train.launcher
    if launcher not in CLUSTER_LAUNCHERS:
        raise RecipeError(f"train.launcher is {launcher!r}: only {' and '.join(CLUSTER_LAUNCHERS)} render a "
                          f"cluster job (set train.launcher=pytorchjob or train.launcher=trainjob)")
    spec = job_spec(recipe, run_id)
    if launcher == "pytorchjob":
        from pretrain.launch import pytorchjob

        return pytorchjob.render(spec)
    from pretrain.launch import trainjob

    return trainjob.render(spec)
