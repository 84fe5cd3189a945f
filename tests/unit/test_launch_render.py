"""The cluster job renderer (pure): PyTorchJob and TrainJob shapes, validated strictly against the pinned
upstream CRDs (training-operator v1.9.0, Trainer v2.3.0) and their pod templates as core/v1 pods."""

from __future__ import annotations

import re
from typing import Any

import kubernetes_validate
import pytest
import yaml
from crd_schema import validate_custom

from pretrain.config import RecipeError, load_recipe
from pretrain.launch import pytorchjob, trainjob
from pretrain.launch.render import S3_KEYS, job_name, job_spec, render_job

K8S_VERSION = "1.32.0"
ROOT = "s3://bucket/runs/r"
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
PET = {"PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT"}
GPU = ["train.resources.gpus=4", "train.nproc_per_node=4", "train.resources.cpu=16", "train.resources.memory_gb=64",
       "train.resources.shm_gb=16"]
CPU_POOL = ["cluster.cpu_pool.node_selector={pool: cpu}",
            "cluster.cpu_pool.tolerations=[{key: dedicated, operator: Equal, value: train, effect: NoSchedule}]"]


def recipe(launcher: str, *overrides: str):
    return load_recipe("tiny", [f"run_root={ROOT}", f"train.launcher={launcher}", *overrides])


def k8s_validate(obj: dict[str, Any], what: str) -> None:
    problem = None
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as err:
        problem = f"{err.message} at {'/'.join(str(p) for p in err.absolute_path)}"
    assert problem is None, f"{what}: {problem}"


def pods(job: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(role, pod template) of every pod the job makes; a TrainJob's node pod is its trainer block merged into
    its runtimePatches pod spec (the runtime supplies the container's name and nothing else we rely on)."""
    if job["kind"] == "PyTorchJob":
        return [(role, r["template"]) for role, r in job["spec"]["pytorchReplicaSpecs"].items()]
    trainer = job["spec"]["trainer"]
    (patch,) = job["spec"]["runtimePatches"]
    (node,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    template = node["template"]["spec"]["template"]
    spec = dict(template["spec"])
    (cpatch,) = spec.pop("containers")
    container = {"name": cpatch["name"], "image": trainer["image"], "command": trainer["command"],
                 "env": trainer["env"], "resources": trainer["resourcesPerNode"], **cpatch}
    return [("node", {"metadata": template["metadata"], "spec": {**spec, "containers": [container]}})]


QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti)?$")


def assert_valid(job: dict[str, Any]) -> None:
    validate_custom(job)  # strict: an unknown or misplaced field fails
    for role, template in pods(job):
        # the schemas take any string for a quantity: check the form the API server parses
        amounts = [v for c in template["spec"]["containers"] for part in c["resources"].values() for v in part.values()]
        amounts += [v["emptyDir"]["sizeLimit"] for v in template["spec"]["volumes"] if "emptyDir" in v]
        assert all(QUANTITY.match(a) for a in amounts), amounts
        k8s_validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": role.lower()},
                      "template": template}, f"{job['kind']} {role} pod")


def assert_restricted(pod: dict[str, Any]) -> None:
    """Pod Security Standard "restricted", as the admission controller checks it."""
    spec = pod["spec"]
    psc = spec.get("securityContext", {})
    assert not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))
    allowed = {"emptyDir", "secret", "configMap", "projected", "downwardAPI", "persistentVolumeClaim", "ephemeral",
               "csi"}
    for volume in spec.get("volumes", []):
        assert set(volume) - {"name"} <= allowed, volume
    for c in spec["containers"]:
        sc = c.get("securityContext", {})
        assert sc.get("allowPrivilegeEscalation") is False and not sc.get("privileged")
        assert sc.get("capabilities", {}).get("drop") == ["ALL"] and not sc["capabilities"].get("add")
        assert sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True
        assert sc.get("runAsUser", psc.get("runAsUser", 1)) != 0
        seccomp = sc.get("seccompProfile") or psc.get("seccompProfile")
        assert seccomp == {"type": "RuntimeDefault"}
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"} and psc["runAsNonRoot"] is True


def the_container(pod: dict[str, Any]) -> dict[str, Any]:
    (container,) = pod["spec"]["containers"]
    return container


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e for e in container["env"]}


def test_job_names_are_deterministic_short_dns_labels():
    r = recipe("pytorchjob")
    assert job_name(r, "run-1") == job_name(recipe("pytorchjob"), "run-1")
    assert job_name(r, "run-1") != job_name(r, "run-2")
    assert job_name(r, "run-1").startswith("pt-tiny-")
    long = load_recipe("tiny", [f"run_root={ROOT}", "name=a_very.long_recipe-name.that_goes.on-and-on_and_on.x"])
    for rid in ("0b5c4a3e-6f6e-4d2a-9a51-1c2d3e4f5a6b", "manual", "x" * 300):
        for rec in (r, long):
            name = job_name(rec, rid)
            assert DNS_1035.match(name) and len(name) <= 40, name
    assert job_name(long, "a") != job_name(long, "b")


def test_launcher_local_renders_no_cluster_job():
    with pytest.raises(RecipeError, match=r"train\.launcher"):
        render_job(load_recipe("tiny", [f"run_root={ROOT}"]))


def test_pytorchjob_single_node_on_the_cpu_pool():
    job = render_job(recipe("pytorchjob", "train.nnodes=1", "train.resources.cpu=6", *CPU_POOL), "run-1")
    assert_valid(job)
    spec = job["spec"]
    assert set(spec["pytorchReplicaSpecs"]) == {"Master"} and spec["pytorchReplicaSpecs"]["Master"]["replicas"] == 1
    assert spec["nprocPerNode"] == "2" and "elasticPolicy" not in spec
    assert spec["runPolicy"]["cleanPodPolicy"] in ("Running", "All", "None") and spec["runPolicy"]["backoffLimit"] >= 1
    pod = spec["pytorchReplicaSpecs"]["Master"]["template"]
    c = the_container(pod)
    assert c["name"] == "pytorch" and c["image"].startswith("ghcr.io/pretrain-dev/pretrain:")
    assert c["resources"]["requests"] == c["resources"]["limits"] == {"cpu": "6", "memory": "8Gi"}
    assert env_of(c)["OMP_NUM_THREADS"]["value"] == "3"  # 6 CPUs / 2 processes
    assert pod["spec"]["nodeSelector"] == {"pool": "cpu"}
    assert pod["spec"]["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "train",
                                           "effect": "NoSchedule"}]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}} in pod["spec"]["volumes"]
    assert pod["spec"]["serviceAccountName"] == "pretrain-train"
    assert pod["spec"]["priorityClassName"] == "pretrain-training"
    assert_restricted(pod)


def test_pytorchjob_multi_node_on_the_gpu_pool():
    job = render_job(recipe("pytorchjob", "train.nnodes=4", *GPU), "run-1")
    assert_valid(job)
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 3
    assert job["spec"]["nprocPerNode"] == "4"
    for role in ("Master", "Worker"):
        pod = replicas[role]["template"]
        c = the_container(pod)
        assert c["image"].startswith("ghcr.io/pretrain-dev/pretrain-cuda:")
        assert c["resources"]["limits"] == {"cpu": "16", "memory": "64Gi", "nvidia.com/gpu": "4"}
        assert c["resources"]["requests"] == c["resources"]["limits"]
        assert env_of(c)["OMP_NUM_THREADS"]["value"] == "4"
        assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["spec"]["tolerations"]
        assert pod["spec"]["volumes"][0]["emptyDir"]["sizeLimit"] == "16Gi"
        assert pod["metadata"]["labels"]["pretrain.dev/job"] == job["metadata"]["name"]
        assert_restricted(pod)
    # rank 0 (on the Master) serves /metrics: the PodMonitor finds its port by name there, and only there
    metrics = {"name": "metrics", "containerPort": 9464, "protocol": "TCP"}
    assert metrics in the_container(replicas["Master"]["template"])["ports"]
    assert metrics not in the_container(replicas["Worker"]["template"])["ports"]
    no_port = render_job(recipe("pytorchjob", "train.nnodes=4", "observe.metrics_port=null", *GPU), "run-1")
    assert all(p["name"] != "metrics" for r in no_port["spec"]["pytorchReplicaSpecs"].values()
               for p in the_container(r["template"])["ports"])
    # The operator injects PET_NNODES / PET_NODE_RANK / PET_MASTER_ADDR / PET_MASTER_PORT: no duplicate flags.
    command = the_container(replicas["Worker"]["template"])["command"]
    assert command == ["python", "-m", "torch.distributed.run", "-m", "pretrain.train", "--config",
                       f"{ROOT}/recipe.yaml"]


def test_elastic_pytorchjob_is_workers_only_with_a_c10d_policy():
    job = render_job(recipe("pytorchjob", "train.nnodes=3", "train.elastic.min_nodes=2", "train.elastic.max_nodes=5",
                            "train.elastic.max_restarts=7"), "run-1")
    assert_valid(job)
    spec = job["spec"]
    # A Master would get a fixed MASTER_ADDR and PET_NODE_RANK; the operator's rendezvous host is worker 0.
    assert set(spec["pytorchReplicaSpecs"]) == {"Worker"} and spec["pytorchReplicaSpecs"]["Worker"]["replicas"] == 3
    assert spec["elasticPolicy"] == {"rdzvBackend": "c10d", "minReplicas": 2, "maxReplicas": 5, "maxRestarts": 7}
    c = the_container(spec["pytorchReplicaSpecs"]["Worker"]["template"])
    assert {"name": "pytorchjob-port", "containerPort": 23456, "protocol": "TCP"} in c["ports"]
    assert not any(a.startswith("--nnodes") for a in c["command"])  # PET_NNODES=2:5 comes from the operator
    assert pytorchjob.rank0_selector(job)["training.kubeflow.org/replica-type"] == "worker"
    assert pytorchjob.rank0_selector(render_job(recipe("pytorchjob"), "x"))["training.kubeflow.org/replica-type"] \
        == "master"


@pytest.mark.parametrize("nodes,extra", [(1, []), (3, GPU)])
def test_trainjob_on_the_torch_distributed_runtime(nodes, extra):
    job = render_job(recipe("trainjob", f"train.nnodes={nodes}", *extra, *CPU_POOL), "run-1")
    assert_valid(job)
    spec = job["spec"]
    assert spec["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime",
                                  "name": "torch-distributed"}
    trainer = spec["trainer"]
    assert trainer["numNodes"] == nodes and trainer["numProcPerNode"] == (4 if extra else 2)
    assert trainer["resourcesPerNode"]["requests"] == trainer["resourcesPerNode"]["limits"]
    assert not PET & {e["name"] for e in trainer["env"]}  # reserved: the torch plugin rejects them
    (patch,) = spec["runtimePatches"]
    assert patch["manager"] == "pretrain.dev/launcher"
    ((_, pod),) = pods(job)
    assert pod["spec"]["serviceAccountName"] == "pretrain-train"
    if extra:
        assert trainer["image"].startswith("ghcr.io/pretrain-dev/pretrain-cuda:")
        assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "4"
        assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert pod["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    else:
        assert "nvidia.com/gpu" not in trainer["resourcesPerNode"]["limits"]
        assert pod["spec"]["nodeSelector"] == {"pool": "cpu"}
    assert pod["spec"]["volumes"] == [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit":
                                                                    "16Gi" if extra else "2Gi"}}]
    assert pod["metadata"]["labels"]["pretrain.dev/job"] == job["metadata"]["name"]
    assert_restricted(pod)
    assert trainjob.rank0_selector(job) == {"jobset.sigs.k8s.io/jobset-name": job["metadata"]["name"],
                                            "jobset.sigs.k8s.io/replicatedjob-name": "node",
                                            "jobset.sigs.k8s.io/job-index": "0",
                                            "batch.kubernetes.io/job-completion-index": "0"}


def test_the_crd_check_is_strict_enough_to_catch_a_removed_field():
    job = render_job(recipe("trainjob"), "run-1")
    job["spec"]["trainer"]["numProcPerNodeAuto"] = True
    with pytest.raises(AssertionError, match="numProcPerNodeAuto"):
        validate_custom(job)
    job = render_job(recipe("pytorchjob"), "run-1")
    job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["shm"] = "1Gi"
    with pytest.raises(AssertionError):
        validate_custom(job)


@pytest.mark.parametrize("launcher", ["pytorchjob", "trainjob"])
def test_credentials_only_by_secret_reference(launcher, monkeypatch):
    secret = "s3cr3t-value-that-must-not-leak"
    for key in S3_KEYS:
        monkeypatch.setenv(key, secret)
    job = render_job(recipe(launcher, "cluster.s3_secret=minio-creds"), "run-1")
    assert secret not in yaml.safe_dump(job)
    for _, pod in pods(job):
        env = env_of(the_container(pod))
        for key in S3_KEYS:
            assert "value" not in env[key]
            assert env[key]["valueFrom"] == {"secretKeyRef": {"name": "minio-creds", "key": key}}


@pytest.mark.parametrize("launcher", ["pytorchjob", "trainjob"])
def test_fractional_resources_optional_pod_settings_and_labels(launcher):
    r = recipe(launcher, "name=my_recipe.v2", "train.resources.cpu=1.5", "train.resources.memory_gb=0.5",
               "train.resources.shm_gb=0.25", "train.nproc_per_node=1", "cluster.priority_class=null",
               "cluster.train_service_account=null",
               "cluster.train_image=registry.local:5000/team/pretrain@sha256:" + "a" * 64)
    job = render_job(r, "kfp-run-7")
    assert_valid(job)
    for _, pod in pods(job):
        c = the_container(pod)
        assert c["image"] == "registry.local:5000/team/pretrain@sha256:" + "a" * 64
        assert c["resources"]["limits"] == {"cpu": "1500m", "memory": "512Mi"}
        assert env_of(c)["OMP_NUM_THREADS"]["value"] == "1"
        assert pod["spec"]["volumes"][0]["emptyDir"]["sizeLimit"] == "256Mi"
        assert "priorityClassName" not in pod["spec"] and "serviceAccountName" not in pod["spec"]
        labels = pod["metadata"]["labels"]
        assert labels["app.kubernetes.io/part-of"] == "pretrain" and labels["app.kubernetes.io/component"] == "train"
        assert labels["pretrain.dev/recipe"] == "my_recipe.v2"
        assert all(LABEL_VALUE.match(v) and len(v) <= 63 for v in labels.values()), labels
    assert job["metadata"]["annotations"]["pretrain.dev/run-id"] == "kfp-run-7"
    assert "&id" not in yaml.safe_dump(job)  # no shared objects: `pretrain job` prints plain YAML


def test_job_spec_resolves_the_pool_from_the_gpus():
    cpu = job_spec(recipe("pytorchjob", *CPU_POOL), "a")
    gpu = job_spec(recipe("pytorchjob", *GPU, *CPU_POOL), "a")
    assert cpu.node_selector == {"pool": "cpu"} and cpu.gpus == 0
    assert gpu.node_selector == {"nvidia.com/gpu.present": "true"} and gpu.gpus == 4 and gpu.omp_threads == 4
    assert cpu.name == gpu.name == job_name(recipe("pytorchjob"), "a")
    assert cpu.config_url == f"{ROOT}/recipe.yaml"
