"""The kustomize tree under manifests/: rendered with `kubectl kustomize`, checked offline.

Built-in kinds are validated strictly against the Kubernetes OpenAPI schemas shipped by the
`kubernetes-validate` package; the pod templates inside the CRDs (PyTorchJob, TrainingRuntime,
TrainJob) are validated by wrapping them in the built-in kinds they are made of.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
TARGETS = ["base", "overlays/kind", "overlays/gpu"]
NAMESPACE = "pretrain"
SECRET = "pretrain-s3"
S3_KEYS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
CPU_IMAGE = "ghcr.io/pretrain-dev/pretrain:0.1.0"
CUDA_IMAGE = "ghcr.io/pretrain-dev/pretrain-cuda:0.1.0"
METRICS = ("pretrain_train_loss", "pretrain_tokens_per_second", "pretrain_mfu", "pretrain_step")
# Kubernetes version whose schemas validate the built-in kinds (kubernetes-validate ships 1.25+).
K8S_VERSION = "1.32.0"

CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PriorityClass",
    "StorageClass",
    "PersistentVolume",
    "ClusterTrainingRuntime",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
}
CRD_GROUPS = ("kubeflow.org/", "trainer.kubeflow.org/", "monitoring.coreos.com/")


def validate(obj: dict[str, Any], what: str = "") -> None:
    """Strict schema validation of a built-in kind, failing with one short line (not the schema)."""
    problem = None
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as err:
        problem = f"{err.message} at {'/'.join(str(p) for p in err.absolute_path) or '(top)'}"
    if problem:  # outside the except block, so pytest does not print the whole schema
        pytest.fail(f"{what or obj['kind'] + '/' + obj['metadata']['name']}: {problem}")


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.fail("kubectl is required to render manifests/ (kubectl >= 1.27, with built-in kustomize)")
    return path


@functools.cache
def rendered_text(target: str) -> str:
    proc = subprocess.run(
        [kubectl(), "kustomize", str(MANIFESTS / target)], capture_output=True, text=True, timeout=60, check=False
    )
    if proc.returncode != 0:
        pytest.fail(f"kubectl kustomize manifests/{target} failed:\n{proc.stderr}")
    return proc.stdout


def render(target: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(rendered_text(target)) if doc]


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in by_kind(objs, kind) if name is None or o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def is_crd_kind(obj: dict[str, Any]) -> bool:
    return obj["apiVersion"].startswith(CRD_GROUPS)


def pod_specs(obj: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, pod spec) for every pod template an object carries, built-in or CRD."""
    kind, spec = obj["kind"], obj.get("spec", {})
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        yield kind, spec["template"]["spec"]
    elif kind == "CronJob":
        yield kind, spec["jobTemplate"]["spec"]["template"]["spec"]
    elif kind == "PyTorchJob":
        for role, replica in spec["pytorchReplicaSpecs"].items():
            yield f"PyTorchJob/{role}", replica["template"]["spec"]
    elif kind in ("TrainingRuntime", "ClusterTrainingRuntime"):
        for job in spec["template"]["spec"]["replicatedJobs"]:
            yield f"{kind}/{job['name']}", job["template"]["spec"]["template"]["spec"]


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


def env_from_secret(container: dict[str, Any]) -> dict[str, str]:
    """Env var name -> secret key, for env taken from the pretrain-s3 Secret."""
    out = {}
    for var in container.get("env", []):
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        if ref and ref.get("name") == SECRET:
            out[var["name"]] = ref["key"]
    for source in container.get("envFrom", []):
        if source.get("secretRef", {}).get("name") == SECRET and not source.get("prefix"):
            out.update({k: k for k in S3_KEYS})
    return out


def command_line(container: dict[str, Any]) -> list[str]:
    return [*container.get("command", []), *container.get("args", [])]


def training_containers(objs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """Every container that runs training: PyTorchJob replicas, TrainingRuntime nodes, TrainJob trainer."""
    out = []
    for obj in objs:
        if obj["kind"] in ("PyTorchJob", "TrainingRuntime"):
            for where, pod in pod_specs(obj):
                out.extend((where, c) for c in pod["containers"])
        elif obj["kind"] == "TrainJob":
            out.append(("TrainJob", obj["spec"]["trainer"]))
    return out


@pytest.fixture(params=TARGETS)
def target(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def objs(target: str) -> list[dict[str, Any]]:
    return render(target)


# ---- every target ---------------------------------------------------------------------------------


def test_objects_are_well_formed_and_namespaced(objs):
    assert objs
    seen = set()
    for obj in objs:
        assert obj.get("apiVersion") and obj.get("kind"), obj
        name = obj.get("metadata", {}).get("name")
        assert name, f"{obj['kind']} without metadata.name"
        key = (obj["apiVersion"].split("/")[0], obj["kind"], name)
        assert key not in seen, f"duplicate object {key}"
        seen.add(key)
        assert obj["metadata"].get("labels", {}).get("app.kubernetes.io/part-of") == "pretrain", key
        if obj["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in obj["metadata"], f"cluster-scoped {key} has a namespace"
        else:
            assert obj["metadata"].get("namespace") == NAMESPACE, f"{key} not in namespace {NAMESPACE}"
    assert one(objs, "Namespace")["metadata"]["name"] == NAMESPACE


def test_expected_objects_present(objs):
    for kind, name in [
        ("ServiceAccount", "pretrain-pipeline"),
        ("ServiceAccount", "pretrain-train"),
        ("Role", "pretrain-launcher"),
        ("RoleBinding", "pretrain-launcher"),
        ("ConfigMap", "pretrain-defaults"),
        ("ConfigMap", "pretrain-grafana-dashboard"),
        ("PyTorchJob", "pretrain-train"),
        ("TrainJob", "pretrain-train"),
        ("TrainingRuntime", "pretrain-torch"),
        ("PodMonitor", "pretrain-training"),
    ]:
        one(objs, kind, name)
    assert one(objs, "PyTorchJob")["apiVersion"] == "kubeflow.org/v1"
    assert one(objs, "TrainJob")["apiVersion"] == "trainer.kubeflow.org/v1alpha1"
    assert one(objs, "TrainingRuntime")["apiVersion"] == "trainer.kubeflow.org/v1alpha1"
    assert one(objs, "PodMonitor")["apiVersion"] == "monitoring.coreos.com/v1"


def test_builtin_kinds_validate_against_kubernetes_schemas(objs):
    checked = 0
    for obj in objs:
        if is_crd_kind(obj):
            continue
        validate(obj)
        checked += 1
    assert checked >= 6


def test_pod_templates_inside_crds_validate(objs):
    """PyTorchJob and JobSet templates are built-in PodTemplateSpec/JobTemplateSpec: validate them."""
    for obj in by_kind(objs, "PyTorchJob"):
        for role, replica in obj["spec"]["pytorchReplicaSpecs"].items():
            validate(
                {
                    "apiVersion": "v1",
                    "kind": "PodTemplate",
                    "metadata": {"name": role.lower()},
                    "template": replica["template"],
                },
                f"PyTorchJob {role} template",
            )
    for obj in by_kind(objs, "TrainingRuntime"):
        for job in obj["spec"]["template"]["spec"]["replicatedJobs"]:
            validate(
                {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "metadata": {"name": job["name"]},
                    "spec": job["template"]["spec"],
                },
                f"TrainingRuntime job {job['name']}",
            )
    for obj in by_kind(objs, "TrainJob"):
        trainer = obj["spec"]["trainer"]
        container = {
            "name": "node",
            "image": trainer["image"],
            "command": trainer["command"],
            "args": trainer.get("args", []),
            "env": trainer.get("env", []),
            "resources": trainer.get("resourcesPerNode", {}),
        }
        validate(
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "trainer"}, "spec": {"containers": [container]}},
            "TrainJob trainer",
        )


def test_rbac_lets_pipeline_steps_drive_training_jobs(objs):
    role = one(objs, "Role", "pretrain-launcher")

    def verbs(group: str, resource: str) -> set[str]:
        return {
            v
            for rule in role["rules"]
            if group in rule["apiGroups"] and resource in rule["resources"]
            for v in rule["verbs"]
        }

    needed = {"create", "get", "list", "watch", "delete"}
    assert needed <= verbs("kubeflow.org", "pytorchjobs")
    assert needed <= verbs("trainer.kubeflow.org", "trainjobs")
    assert {"get", "list", "watch"} <= verbs("", "pods")
    assert "get" in verbs("", "pods/log")
    # Least privilege: nothing on secrets, no wildcards.
    assert not verbs("", "secrets")
    assert all("*" not in rule["verbs"] and "*" not in rule["resources"] for rule in role["rules"])

    binding = one(objs, "RoleBinding", "pretrain-launcher")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pretrain-launcher"}
    assert {"kind": "ServiceAccount", "name": "pretrain-pipeline", "namespace": NAMESPACE} in binding["subjects"]


def test_training_jobs_run_pretrain_train_under_torchrun(objs):
    found = training_containers(objs)
    assert {w.split("/")[0] for w, _ in found} == {"PyTorchJob", "TrainingRuntime", "TrainJob"}
    for where, container in found:
        cmd = command_line(container)
        assert cmd[0] == "torchrun", (where, cmd)
        assert cmd[cmd.index("-m") + 1] == "pretrain.train", (where, cmd)
        assert cmd[cmd.index("--config") + 1], (where, cmd)
    pytorchjob = one(objs, "PyTorchJob")
    assert set(pytorchjob["spec"]["pytorchReplicaSpecs"]) == {"Master", "Worker"}
    assert pytorchjob["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] == 1
    for role, replica in pytorchjob["spec"]["pytorchReplicaSpecs"].items():
        # The Training Operator only wires the container named `pytorch`.
        assert [c["name"] for c in replica["template"]["spec"]["containers"]] == ["pytorch"], role
    # The config URL the command expands is defined where the command runs.
    for where, container in found:
        if "$(PRETRAIN_CONFIG)" in command_line(container) and where != "TrainingRuntime/node":
            assert "PRETRAIN_CONFIG" in {e["name"] for e in container.get("env", [])}, where
    trainjob = one(objs, "TrainJob")
    runtime = one(objs, "TrainingRuntime")
    assert trainjob["spec"]["runtimeRef"] == {
        "apiGroup": "trainer.kubeflow.org",
        "kind": "TrainingRuntime",
        "name": runtime["metadata"]["name"],
    }
    # Templates are applied suspended: applying the tree never starts a training run by itself.
    assert pytorchjob["spec"]["runPolicy"]["suspend"] is True
    assert trainjob["spec"]["suspend"] is True


def test_training_pods_get_s3_credentials_from_the_secret(objs):
    for where, container in training_containers(objs):
        refs = env_from_secret(container)
        assert refs == {k: k for k in S3_KEYS}, (where, refs)


def test_no_credentials_in_rendered_objects(objs, target):
    assert not by_kind(objs, "Secret"), "Secrets must be created out of band, never rendered"
    for obj in objs:
        for where, pod in pod_specs(obj):
            for container in containers(pod):
                for var in container.get("env", []):
                    if var["name"] in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
                        assert "value" not in var, (obj["kind"], where, var)
                        assert var["valueFrom"]["secretKeyRef"]["name"] == SECRET, (where, var)
    for _, container in [("TrainJob", t["spec"]["trainer"]) for t in by_kind(objs, "TrainJob")]:
        for var in container.get("env", []):
            if var["name"].startswith("AWS_"):
                assert "value" not in var, var
    text = rendered_text(target)
    # No `AWS_SECRET_ACCESS_KEY: value` / `AWS_SECRET_ACCESS_KEY=value` anywhere (ConfigMap data,
    # scripts, args); only references by name (`name:`/`key:` fields, `${...}` in scripts).
    assert not re.search(r"AWS_SECRET_ACCESS_KEY[\"']?\s*[:=]", text)
    # Generated S3 identity files take the secret from the environment, never a literal.
    for value in re.findall(r'secretKey"\s*:\s*"([^"]*)"', text):
        assert value == "%s" or value.startswith("$"), value


def test_training_pods_have_memory_backed_shm_and_metrics_port(objs):
    pods = [(w, p) for o in objs if o["kind"] in ("PyTorchJob", "TrainingRuntime") for w, p in pod_specs(o)]
    assert pods
    for where, pod in pods:
        volumes = {v["name"]: v for v in pod["volumes"]}
        container = pod["containers"][0]
        shm = [m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm"]
        assert len(shm) == 1, where
        assert volumes[shm[0]["name"]]["emptyDir"]["medium"] == "Memory", where
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports.get("metrics") == 9090, where
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["serviceAccountName"] == "pretrain-train", where


def test_podmonitor_selects_training_pods(objs):
    monitor = one(objs, "PodMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    endpoints = monitor["spec"]["podMetricsEndpoints"]
    assert [(e["port"], e["path"]) for e in endpoints] == [("metrics", "/metrics")]
    for obj in objs:
        if obj["kind"] == "PyTorchJob":
            templates = [r["template"] for r in obj["spec"]["pytorchReplicaSpecs"].values()]
        elif obj["kind"] == "TrainingRuntime":
            templates = [j["template"]["spec"]["template"] for j in obj["spec"]["template"]["spec"]["replicatedJobs"]]
        else:
            continue
        for template in templates:
            labels = template["metadata"]["labels"]
            assert selector.items() <= labels.items(), (obj["kind"], labels)
    # Nothing else (e.g. the S3 server) is scraped as a training pod.
    for obj in objs:
        if obj["kind"] == "Deployment":
            labels = obj["spec"]["template"]["metadata"]["labels"]
            assert not selector.items() <= labels.items(), obj["metadata"]["name"]


def test_grafana_dashboard(objs):
    cm = one(objs, "ConfigMap", "pretrain-grafana-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    ((name, text),) = cm["data"].items()
    assert name.endswith(".json")
    dashboard = json.loads(text)
    assert dashboard["uid"] and dashboard["title"]
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    exprs = " ".join(t["expr"] for p in panels for t in p["targets"])
    for metric in METRICS:
        assert metric in exprs, metric
    assert "pretrain_train_loss" in text
    titles = " ".join(p["title"].lower() for p in panels)
    assert "loss" in titles and "tokens/s" in titles and "mfu" in titles
    # Every variable the queries use is defined.
    defined = {v["name"] for v in dashboard["templating"]["list"]}
    used = set(re.findall(r"\$(\w+)", exprs + json.dumps([p["datasource"] for p in panels]))) - {"__rate_interval"}
    used |= set(re.findall(r"\$\{(\w+)\}", json.dumps(dashboard)))
    assert used <= defined, used - defined


def test_defaults_configmap(objs, target):
    data = one(objs, "ConfigMap", "pretrain-defaults")["data"]
    assert data["PRETRAIN_RUN_ROOT"] == "s3://pretrain/runs"
    assert data["PRETRAIN_IMAGE"] == CPU_IMAGE
    assert data["PRETRAIN_CUDA_IMAGE"] == CUDA_IMAGE
    assert data["PRETRAIN_S3_SECRET"] == SECRET
    assert data["PRETRAIN_NAMESPACE"] == NAMESPACE
    assert data["PRETRAIN_TRAIN_IMAGE"] == (CUDA_IMAGE if target == "overlays/gpu" else CPU_IMAGE)


# ---- per target ------------------------------------------------------------------------------------


def gpu_requests(objs: list[dict[str, Any]]) -> list[str]:
    return [
        where
        for where, c in training_containers(objs)
        if "nvidia.com/gpu" in json.dumps(c.get("resources", c.get("resourcesPerNode", {})))
    ]


@pytest.mark.parametrize("target", ["base", "overlays/kind"])
def test_cpu_targets_use_cpu_image_and_no_gpus(target):
    objs = render(target)
    assert "nvidia.com/gpu" not in rendered_text(target)
    assert not gpu_requests(objs)
    for where, container in training_containers(objs):
        assert container["image"] == CPU_IMAGE, where


def test_gpu_overlay():
    objs = render("overlays/gpu")
    for where, container in training_containers(objs):
        assert container["image"] == CUDA_IMAGE, where
    pytorchjob = one(objs, "PyTorchJob")
    nproc = pytorchjob["spec"]["nprocPerNode"]
    for role, replica in pytorchjob["spec"]["pytorchReplicaSpecs"].items():
        pod = replica["template"]["spec"]
        resources = pod["containers"][0]["resources"]
        assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == nproc, role
    trainjob = one(objs, "TrainJob")
    per_node = trainjob["spec"]["trainer"]["resourcesPerNode"]
    assert per_node["limits"]["nvidia.com/gpu"] == str(trainjob["spec"]["trainer"]["numProcPerNode"])
    for obj in objs:
        for where, pod in pod_specs(obj):
            if obj["kind"] in ("PyTorchJob", "TrainingRuntime"):
                assert pod["nodeSelector"], where
                assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"]), where
    for where, container in training_containers(objs):
        env = {e["name"] for e in container["env"]}
        assert {"NCCL_DEBUG", "NCCL_SOCKET_IFNAME"} <= env, where


def test_kind_overlay_runs_seaweedfs_and_one_worker():
    objs = render("overlays/kind")
    deployment = one(objs, "Deployment", "seaweedfs")
    pod = deployment["spec"]["template"]["spec"]
    server = pod["containers"][0]
    assert server["image"].startswith("chrislusf/seaweedfs:") and not server["image"].endswith(":latest")
    cmd = command_line(server)
    assert cmd[cmd.index("server") + 1] == "-s3"
    assert "-s3.port=8333" in cmd
    config = next(a.split("=", 1)[1] for a in cmd if a.startswith("-s3.config="))
    assert any(config.startswith(m["mountPath"]) for m in server["volumeMounts"])
    # The server's identity comes from the same Secret the pipeline uses.
    init = pod["initContainers"][0]
    assert env_from_secret(init) == {
        "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
    }
    service = one(objs, "Service", "seaweedfs")
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert [p["port"] for p in service["spec"]["ports"]] == [8333]
    claim = pod["volumes"][0]["persistentVolumeClaim"]["claimName"]
    one(objs, "PersistentVolumeClaim", claim)

    pytorchjob = one(objs, "PyTorchJob")
    assert pytorchjob["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 1
    assert pytorchjob["spec"]["nprocPerNode"] == "1"
    assert one(objs, "TrainJob")["spec"]["trainer"]["numProcPerNode"] == 1


# ---- files that are not rendered ---------------------------------------------------------------------


def test_secret_template_is_a_placeholder_and_not_a_resource():
    path = MANIFESTS / "base" / "secret-template.yaml"
    secret = yaml.safe_load(path.read_text())
    validate(secret)
    assert secret["kind"] == "Secret" and secret["metadata"]["name"] == SECRET
    assert secret["metadata"]["namespace"] == NAMESPACE
    assert sorted(secret["stringData"]) == sorted(S3_KEYS)
    assert secret["stringData"]["AWS_ACCESS_KEY_ID"] == secret["stringData"]["AWS_SECRET_ACCESS_KEY"] == "REPLACE_ME"
    assert "TEMPLATE" in path.read_text().splitlines()[0]
    kustomization = yaml.safe_load((MANIFESTS / "base" / "kustomization.yaml").read_text())
    assert "secret-template.yaml" not in kustomization.get("resources", [])
    for target in TARGETS:
        assert "REPLACE_ME" not in rendered_text(target)
