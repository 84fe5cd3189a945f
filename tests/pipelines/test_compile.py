"""The pipeline compiles to KFP v2 YAML that a KFP server accepts: the DAG, the fan-out, the settings."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml


def compile_yaml(tmp_path, *args):
    out = tmp_path / "pipeline.yaml"
    proc = subprocess.run([sys.executable, "-m", "pretrain.cli", "compile", *args, "-o", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return list(yaml.safe_load_all(out.read_text()))


def test_compiled_dag(tmp_path):
    spec, platform = compile_yaml(tmp_path, "tiny", "train.max_steps=3")
    assert spec["pipelineInfo"]["name"] == "pretrain"
    tasks = spec["root"]["dag"]["tasks"]
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
    assert inner["ingest"]["retryPolicy"]["maxRetryCount"] == 2
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
    assert default["train"]["max_steps"] == 3 and default["run_root"].endswith("runs/tiny")
    # KFP caching off (the steps reuse work by fingerprint); S3 credentials from a Secret, never inline
    assert not any(t.get("cachingOptions", {}).get("enableCache") for t in tasks.values())
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert executors["exec-train"]["secretAsEnv"][0]["secretName"] == "pretrain-s3"
    assert "AWS_SECRET_ACCESS_KEY" not in json.dumps(spec)
    # components are lightweight Python on our image, with no pip install at run time
    train_exec = spec["deploymentSpec"]["executors"]["exec-train"]["container"]
    assert train_exec["image"].startswith("ghcr.io/pretrain-dev/pretrain")
    assert "pip install" not in " ".join(train_exec["command"])


def test_compiled_yaml_parses_as_the_kfp_protos(tmp_path):
    """What a KFP server does on upload: parse the spec (and the Kubernetes platform spec) strictly."""
    from google.protobuf import json_format
    from kfp.kubernetes import kubernetes_executor_config_pb2
    from kfp.pipeline_spec import pipeline_spec_pb2

    spec, platform = compile_yaml(tmp_path, "quickstart")
    json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec())  # raises on any unknown or mistyped field
    parsed = json_format.ParseDict(platform, pipeline_spec_pb2.PlatformSpec())
    executors = parsed.platforms["kubernetes"].deployment_spec.executors
    for name in spec["deploymentSpec"]["executors"]:
        config = kubernetes_executor_config_pb2.KubernetesExecutorConfig()
        json_format.ParseDict(json_format.MessageToDict(executors[name]), config)
        assert config.secret_as_env[0].secret_name == "pretrain-s3"


def test_compile_rejects_a_bad_recipe(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pretrain.cli", "compile", "tiny", "train.bogus=1", "-o",
                           str(tmp_path / "p.yaml")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "train.bogus: unknown key" in proc.stderr
    assert not (tmp_path / "p.yaml").exists()
