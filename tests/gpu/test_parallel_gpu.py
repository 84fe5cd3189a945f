"""parallelize() on CUDA, one GPU: FSDP2 with the bf16 MixedPrecisionPolicy, selective AC, regional inductor
compile, TF32 and a meta-device init; and the persistent compile cache's cold vs warm first step.

Deselected by default (marker ``gpu``); ``tests/gpu/run.sh`` runs it. The CPU/gloo paths are in
tests/unit/test_parallel.py; the tiny model and TrainModule stand-in come from tests/unit/parallel_worker.py.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

UNIT = Path(__file__).resolve().parents[1] / "unit"
sys.path.insert(0, str(UNIT))
from parallel_worker import VOCAB, TrainModule, full_weights, init, tiny_llama  # noqa: E402

from pretrain.config import ModelConfig, TrainConfig  # noqa: E402

pytestmark = pytest.mark.gpu
SHAPE = ModelConfig(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=512, seq_len=128)


def report(name: str, data: dict) -> None:
    out = Path(os.environ.get("OUT", "/tmp"))
    (out / f"{name}.json").write_text(json.dumps(data, indent=2))
    print(name, json.dumps(data))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cuda_group():
    import torch.distributed as dist

    assert torch.cuda.is_available(), "this test needs a CUDA GPU"
    device = torch.device("cuda", 0)
    torch.cuda.set_device(device)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1,
                            device_id=device)
    yield device
    dist.destroy_process_group()


def fsdp_bf16_compiled_run(device: torch.device, cache: str, steps: int = 30) -> dict:
    """Train a meta-initialized model under FSDP2 (bf16 policy) + selective AC + regional compile on a fixed batch;
    what a test checks: weights vs a plain build, dtypes, TF32, compile counts, losses and step times."""
    import torch._dynamo
    from torch._dynamo.utils import counters
    from torch.distributed.tensor import DTensor

    from pretrain.model.parallel import clip_grad_norm, parallelize

    torch._dynamo.reset()
    counters.clear()
    batch = torch.randint(0, VOCAB, (8, SHAPE.seq_len + 1), generator=torch.Generator().manual_seed(0)).to(device)
    reference = TrainModule(tiny_llama(str(device), SHAPE))
    with torch.no_grad():
        reference_loss = reference(batch).item()
    cfg = TrainConfig(parallel="fsdp", precision="bf16", compile=True, compile_cache=cache, tf32=True,
                      activation_checkpointing="selective")
    module = parallelize(TrainModule(tiny_llama("meta", SHAPE)), cfg, device, init=init)
    expected, got = full_weights(reference), full_weights(module)
    same = got.keys() == expected.keys() and all(torch.equal(v, expected[k]) for k, v in got.items())
    head_dtypes = []
    module.model.lm_head.register_forward_hook(lambda m, a, out: head_dtypes.append(str(out.dtype)))
    opt = torch.optim.AdamW(module.parameters(), lr=3e-3)
    losses, times, norms = [], [], []
    for _ in range(steps):
        start = time.perf_counter()  # the previous loss.item() synchronized
        loss = module(batch)
        loss.backward()
        norms.append(clip_grad_norm(module, 1.0))
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        times.append(time.perf_counter() - start)
    params = list(module.parameters())
    return {"same_init_as_plain_build": same, "reference_loss": reference_loss, "losses": losses,
            "first_step_s": round(times[0], 2), "step_s": round(sorted(times[1:])[len(times) // 2], 4),
            "params_dtensor": all(isinstance(p, DTensor) for p in params),
            "param_dtypes": sorted({str(p.dtype) for p in params}), "head_output_dtype": head_dtypes[0],
            "matmul_precision": torch.get_float32_matmul_precision(),
            "norm_is_plain": all(type(n) is torch.Tensor and n.isfinite() for n in norms),
            "unique_graphs": counters["stats"]["unique_graphs"], "graph_breaks": sum(counters["graph_break"].values()),
            "cache_dir": os.environ.get("TORCHINDUCTOR_CACHE_DIR"), "cache_files": sum(
                len(f) for _, _, f in os.walk(cache)), "max_memory_gb": round(
                torch.cuda.max_memory_allocated(device) / 2**30, 3) if device.type == "cuda" else None}


def test_fsdp_bf16_policy_compile_and_meta_init_on_one_gpu(cuda_group, tmp_path):
    result = fsdp_bf16_compiled_run(cuda_group, str(tmp_path / "cache"))
    report("gpu_parallel_fsdp_bf16_compile", result)
    assert result["same_init_as_plain_build"]            # meta -> to_empty -> init on the GPU, then sharded
    assert result["params_dtensor"] and result["param_dtypes"] == ["torch.float32"]  # fp32 master shards
    assert result["head_output_dtype"] == "torch.bfloat16"  # ... gathered and computed in bf16
    assert result["matmul_precision"] == "high"             # TF32 for what stays fp32
    assert result["norm_is_plain"]
    assert result["unique_graphs"] == 1 and result["graph_breaks"] == 0  # one graph for all 4 blocks
    assert result["cache_dir"] == str(tmp_path / "cache") and result["cache_files"] > 0
    assert result["losses"][0] == pytest.approx(result["reference_loss"], rel=2e-2)  # bf16 vs fp32 eager
    assert result["losses"][-1] < result["losses"][0] - 0.5  # it learns the batch


WARM = """
import json, sys, time, torch
from parallel_worker import TrainModule, tiny_llama, VOCAB
from pretrain.config import ModelConfig, TrainConfig
from pretrain.model.parallel import parallelize
from torch._dynamo.utils import counters
shape = ModelConfig(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=512, seq_len=128)
module = parallelize(TrainModule(tiny_llama("cuda", shape)), TrainConfig(compile=True, compile_cache=sys.argv[1],
                     precision="bf16"), torch.device("cuda"))
batch = torch.randint(0, VOCAB, (8, 129), device="cuda")
start = time.perf_counter()
with torch.autocast("cuda", dtype=torch.bfloat16):
    loss = module(batch)
loss.backward()
torch.cuda.synchronize()
print(json.dumps({"first_step_s": round(time.perf_counter() - start, 2),
                  "fx_hits": counters["inductor"]["fxgraph_cache_hit"],
                  "aot_hits": counters["aot_autograd"]["autograd_cache_hit"]}))
"""


def test_compile_cache_makes_a_restart_compile_faster(tmp_path):
    """Two processes, one cache folder (train.compile_cache): the second finds the FX graphs and AOTAutograd
    entries of the first (DDP-like path: compile only, bf16 autocast)."""
    assert torch.cuda.is_available(), "this test needs a CUDA GPU"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(UNIT), os.environ.get("PYTHONPATH", "")])}
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    runs = []
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", WARM, str(tmp_path / "cache")], env=env, capture_output=True,
                              text=True, timeout=400)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    report("gpu_parallel_compile_cache", {"cold": runs[0], "warm": runs[1]})
    assert runs[0]["fx_hits"] == 0 and runs[1]["fx_hits"] >= 2 and runs[1]["aot_hits"] >= 1
    assert runs[1]["first_step_s"] < runs[0]["first_step_s"]
