"""The pipeline compiles to KFP v2 YAML that a KFP server accepts: the DAG, the fan-out, the settings."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

S3_ROOT = "run_root=s3://bucket/runs/tiny"


def compile_yaml(tmp_path, *args):
    out = tmp_path / "pipeline.yaml"
    proc = subprocess.run([sys.executable, "-m", "pretrain.cli", "compile", *args, "-o", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return list(yaml.safe_load_all(out.read_text()))


def compile_in_process(tmp_path, recipe, overrides=(), image=None):
    """The same compile, in this process (fast): the pipeline spec and the Kubernetes config of each executor."""
    from pretrain.pipelines.pretrain_dag import compile_pipeline

    from pretrain.config import load_recipe

    out = tmp_path / "pipeline.yaml"
    compile_pipeline(load_recipe(recipe, list(overrides)), str(out), image=image)
    text = out.read_text()
    spec, platform = yaml.safe_load_all(text)
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"], text


def dag_tasks(spec):
    """The DAG's tasks, inside the exit handler whose clean-up step deletes a failed run's training job."""
    return spec["components"][spec["root"]["dag"]["tasks"]["exit-handler-1"]["componentRef"]["name"]]["dag"]["tasks"]


def test_compiled_dag(tmp_path):
    spec, platform = compile_yaml(tmp_path, "tiny", "train.max_steps=3", S3_ROOT)
    assert spec["pipelineInfo"]["name"] == "pretrain"
    tasks = dag_tasks(spec)
    assert {"plan", "dedup", "tokenize", "train", "export", "evaluate"} <= set(tasks)
    loops = {n: t for n, t in tasks.items() if n.startswith("for-loop")}
    inner_of = {n: set(spec["components"][t["componentRef"]["name"]]["dag"]["tasks"]) for n, t in loops.items()}
    assert sorted(map(sorted, inner_of.values())) == [["dedup-buckets"], ["dedup-remove"], ["dedup-sketch"],
                                                      ["filter-documents", "ingest"], ["tokenize-encode"]]
    loop_name = next(n for n, inner in inner_of.items() if "ingest" in inner)
    loop = loops[loop_name]
    assert loop["parameterIterator"]["items"]["inputParameter"]
    assert all(t["iteratorPolicy"]["parallelismLimit"] == 2 for t in loops.values())  # pipeline.parallelism
    inner = spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]
    assert inner["ingest"]["retryPolicy"] == {"maxRetryCount": 2, "backoffDuration": "30s", "backoffFactor": 2.0,
                                              "backoffMaxDuration": "3600s"}  # cluster.step_retries
    # dependencies: dedup's plan collects the partitions loop; each dedup stage waits for the one before;
    # the dedup manifest collects the removal loop; evaluate comes last
    assert loop_name in tasks["dedup-plan"]["dependentTasks"]
    loop_after = {t["dependentTasks"][0]: n for n, t in loops.items()}
    sketch_loop = loop_after["dedup-plan"]
    assert tasks["dedup-bucket-plan"]["dependentTasks"] == [sketch_loop]
    assert tasks["dedup-cluster"]["dependentTasks"] == [loop_after["dedup-bucket-plan"]]
    assert tasks["dedup"]["dependentTasks"] == [loop_after["dedup-cluster"]]
    assert tasks["tokenize-prepare"]["dependentTasks"] == ["dedup"]  # tokenizer, then encoding per partition
    assert tasks["tokenize"]["dependentTasks"] == [loop_after["tokenize-prepare"]]
    assert set(tasks["evaluate"]["dependentTasks"]) >= {"export", "tokenize", "train"}
    # the resolved recipe is the default of the one parameter
    default = json.loads(spec["root"]["inputDefinitions"]["parameters"]["recipe"]["defaultValue"])
    assert default["train"]["max_steps"] == 3 and default["run_root"] == "s3://bucket/runs/tiny"
    # KFP caching off (the steps reuse work by fingerprint); S3 credentials from a Secret, never inline
    assert not any(t.get("cachingOptions", {}).get("enableCache") for t in tasks.values())
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert executors["exec-train"]["secretAsEnv"][0]["secretName"] == "pretrain-s3"
    assert "AWS_SECRET_ACCESS_KEY" not in json.dumps(spec)
    # components are lightweight Python on our image, with no pip install at run time
    train_exec = spec["deploymentSpec"]["executors"]["exec-train"]["container"]
    assert train_exec["image"].startswith("ghcr.io/pretrain-dev/pretrain")
    assert "pip install" not in " ".join(train_exec["command"])


@pytest.mark.parametrize("args", [["quickstart", "run_root=s3://bucket/runs/qs"],  # data steps, CPU training
                                  ["tiny", S3_ROOT, "train.resources.gpus=2"]])  # torchrun on the GPU pool
def test_compiled_yaml_parses_as_the_kfp_protos(tmp_path, args):
    """What a KFP server does on upload: parse the spec (and the Kubernetes platform spec) strictly."""
    from google.protobuf import json_format
    from kfp.kubernetes import kubernetes_executor_config_pb2
    from kfp.pipeline_spec import pipeline_spec_pb2

    spec, platform = compile_yaml(tmp_path, *args)
    json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec())  # raises on any unknown or mistyped field
    parsed = json_format.ParseDict(platform, pipeline_spec_pb2.PlatformSpec())
    executors = parsed.platforms["kubernetes"].deployment_spec.executors
    for name in spec["deploymentSpec"]["executors"]:
        config = kubernetes_executor_config_pb2.KubernetesExecutorConfig()
        json_format.ParseDict(json_format.MessageToDict(executors[name]), config)
        assert name == "exec-cleanup" or config.secret_as_env[0].secret_name == "pretrain-s3"


def test_compile_rejects_a_bad_recipe(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pretrain.cli", "compile", "tiny", "train.bogus=1", "-o",
                           str(tmp_path / "p.yaml")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "train.bogus: unknown key" in proc.stderr
    assert not (tmp_path / "p.yaml").exists()


def test_data_steps_cpu_pool_resources_shm_timeout_retries(tmp_path):
    spec, executors, _ = compile_in_process(tmp_path, "tiny", [
        S3_ROOT, "cluster.cpu_pool.node_selector={pool: cpu}",
        "cluster.cpu_pool.tolerations=[{key: dedicated, operator: Equal, value: data, effect: NoSchedule}]",
        "cluster.step_resources={cpu: 3, memory_gb: 12, shm_gb: 2}", "cluster.step_timeout_minutes=90",
        "cluster.step_retries=4"])
    containers = spec["deploymentSpec"]["executors"]
    for name in ("exec-plan", "exec-ingest", "exec-filter-documents", "exec-dedup-sketch", "exec-tokenize",
                 "exec-export", "exec-evaluate"):
        k8s = executors[name]
        assert k8s["nodeSelector"]["labels"] == {"pool": "cpu"}
        assert k8s["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "data",
                                       "effect": "NoSchedule"}]
        assert k8s["emptyDirMounts"] == [{"volumeName": "dshm", "mountPath": "/dev/shm", "medium": "Memory",
                                          "sizeLimit": "2048Mi"}]
        assert k8s["activeDeadlineSeconds"] == str(90 * 60)
        res = containers[name]["container"]["resources"]
        assert (res["resourceCpuRequest"], res["resourceCpuLimit"]) == ("3000m", "3000m")
        assert (res["resourceMemoryRequest"], res["resourceMemoryLimit"]) == ("12288Mi", "12288Mi")
        assert "accelerator" not in res
    tasks = dag_tasks(spec)
    loops = [spec["components"][t["componentRef"]["name"]]["dag"]["tasks"] for n, t in tasks.items()
             if n.startswith("for-loop")]
    retried = {**tasks, **{k: v for loop in loops for k, v in loop.items()}}
    for name in ("plan", "ingest", "dedup-cluster", "tokenize", "export", "evaluate"):
        assert retried[name]["retryPolicy"]["maxRetryCount"] == 4, name
        assert retried[name]["retryPolicy"]["backoffFactor"] == 2.0


def test_train_on_the_gpu_pool_when_torchrun_runs_in_its_pod(tmp_path):
    spec, executors, _ = compile_in_process(tmp_path, "tiny", [
        S3_ROOT, "train.resources={gpus: 4, cpu: 16, memory_gb: 64, shm_gb: 8}", "train.nproc_per_node=4",
        "cluster.gpu_pool={node_selector: {nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3}, gpus_per_node: 8, "
        "tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]}"])
    train = executors["exec-train"]
    assert train["nodeSelector"]["labels"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert train["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert train["emptyDirMounts"][0]["sizeLimit"] == "8192Mi"
    assert "activeDeadlineSeconds" not in train  # training takes as long as it takes
    container = spec["deploymentSpec"]["executors"]["exec-train"]["container"]
    res = container["resources"]
    assert res["accelerator"]["resourceType"] == "nvidia.com/gpu" and res["accelerator"]["resourceCount"] == "4"
    assert (res["resourceCpuLimit"], res["resourceMemoryLimit"]) == ("16000m", "65536Mi")
    assert container["image"].startswith("ghcr.io/pretrain-dev/pretrain-cuda:")  # the training image
    assert spec["deploymentSpec"]["executors"]["exec-plan"]["container"]["image"].startswith(
        "ghcr.io/pretrain-dev/pretrain:")
    assert "nodeSelector" not in executors["exec-plan"]  # data steps stay on the (default) CPU pool


def test_a_cluster_launcher_makes_train_a_small_cpu_pod_that_drives_the_job(tmp_path):
    spec, executors, _ = compile_in_process(tmp_path, "gpu-125m")  # trainjob, 8 GPUs per node
    container = spec["deploymentSpec"]["executors"]["exec-train"]["container"]
    res = container["resources"]
    assert "accelerator" not in res and res["resourceCpuLimit"] == "500m" and res["resourceMemoryLimit"] == "1Gi"
    assert container["image"].startswith("ghcr.io/pretrain-dev/pretrain:")
    assert "nvidia.com/gpu.present" not in json.dumps(executors["exec-train"])
    assert executors["exec-train"]["secretAsEnv"][0]["optional"] is False
    # the run id that names the job, the same on every retry of the step
    train = dag_tasks(spec)["train"]
    assert train["inputs"]["parameters"]["run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"
    assert train["retryPolicy"]["maxRetryCount"] >= 1


def test_exit_handler_cleans_up_with_the_run_id_and_final_status(tmp_path):
    spec, executors, _ = compile_in_process(tmp_path, "tiny", [S3_ROOT])
    root = spec["root"]["dag"]["tasks"]
    assert set(root) == {"exit-handler-1", "cleanup"}
    cleanup = root["cleanup"]
    assert cleanup["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert cleanup["dependentTasks"] == ["exit-handler-1"]
    params = cleanup["inputs"]["parameters"]
    assert params["status"]["taskFinalStatus"]["producerTask"] == "exit-handler-1"
    assert params["run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"
    assert params["recipe"]["componentInputParameter"] == "recipe"
    assert executors["exec-cleanup"]["activeDeadlineSeconds"]


def test_the_storage_secret_is_required_for_s3_and_absent_for_a_local_root(tmp_path):
    _, executors, _ = compile_in_process(tmp_path, "tiny", [S3_ROOT, "cluster.s3_secret=team-minio"])
    for name, k8s in executors.items():
        if name == "exec-cleanup":  # talks to the API server only
            assert "secretAsEnv" not in k8s
            continue
        (secret,) = k8s["secretAsEnv"]
        assert secret["secretName"] == "team-minio" and secret["optional"] is False
        assert {e["envVar"] for e in secret["keyToEnv"]} == {"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                                                              "AWS_SECRET_ACCESS_KEY"}
    _, executors, _ = compile_in_process(tmp_path, "tiny", ["run_root=/tmp/runs/tiny"])
    assert not any("secretAsEnv" in k8s for k8s in executors.values())


def test_no_credential_value_in_the_compiled_yaml(tmp_path, monkeypatch):
    secret = "s3cr3t-VALUE-never-compiled"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA-not-compiled-either")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio.private.example:9000")
    _, _, text = compile_in_process(tmp_path, "tiny", [S3_ROOT])
    for value in (secret, "AKIA-not-compiled-either", "minio.private.example"):
        assert value not in text


def test_image_override(tmp_path):
    image = "registry.example/team/pretrain:2.0.1"
    spec, _, _ = compile_in_process(tmp_path, "tiny", [S3_ROOT], image=image)
    images = {n: e["container"]["image"] for n, e in spec["deploymentSpec"]["executors"].items()}
    assert set(images.values()) == {image}  # CPU training: the train step too
    default = json.loads(spec["root"]["inputDefinitions"]["parameters"]["recipe"]["defaultValue"])
    assert default["cluster"]["image"] == image  # cluster jobs follow it
    spec, _, _ = compile_in_process(tmp_path, "tiny", [S3_ROOT, "cluster.image=registry.example/p:1.0"])
    assert {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()} == {
        "registry.example/p:1.0"}


def test_compile_rejects_an_image_without_tag_or_digest(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pretrain.cli", "compile", "tiny", S3_ROOT, "--image",
                           "registry.example/pretrain", "-o", str(tmp_path / "p.yaml")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "--image" in proc.stderr and "neither a tag nor a digest" in proc.stderr
    assert not (tmp_path / "p.yaml").exists()
