"""parallelize() from outside the model: DDP / FSDP2 in real 2-process gloo groups match one process, activation
checkpointing recomputes without changing the numbers, meta-device init, regional compile, unchanged keys."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from parallel_worker import SEQ, VOCAB, TrainModule, data, init_params_only, tiny_llama
from torch.utils._python_dispatch import TorchDispatchMode

from pretrain.config import TrainConfig
from pretrain.model.parallel import (
    clip_grad_norm,
    enable_compile_cache,
    gradient_sync,
    parallelize,
    transformer_blocks,
    unwrap,
)

WORKER = Path(__file__).with_name("parallel_worker.py")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("parallel") / "result.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(WORKER), str(out)]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("run", ["ddp_micro1", "fsdp_micro1", "ddp_micro2", "fsdp_micro2"])
def test_two_ranks_train_like_one_process_on_the_whole_batch(two_ranks, run):
    """Half the batch per rank (and in 2 micro-batches with gradient_sync) = one process on the whole batch:
    same losses, same global gradient norms (clipped at 1.0), same weights after 5 AdamW steps."""
    assert two_ranks["world"] == 2
    ref, got = two_ranks["reference"], two_ranks[run]
    assert got["losses"] == pytest.approx(ref["losses"], abs=1e-5)
    assert got["norms"] == pytest.approx(ref["norms"], abs=1e-5)
    assert max(ref["norms"]) > 1.0  # so clipping did act
    assert got["weights_diff"] < 1e-5
    assert not got["reduced_early"]  # with 2 micro-batches, only the last one's backward reduced gradients


def test_meta_init_under_fsdp_equals_a_normal_init(two_ranks):
    """A meta-device model, sharded by FSDP2 with selective AC: the same weights, rotary buffers, logits and
    generation as a model built normally, and it trains like the one-process reference."""
    assert two_ranks["meta_weights_diff"] == 0.0
    assert two_ranks["meta_rotary_equal"]
    assert two_ranks["meta_logits_diff"] < 1e-6
    assert two_ranks["meta_tied"]  # lm_head and embeddings are one parameter again after to_empty
    assert two_ranks["generate_equal"]  # the HF model alone runs under FSDP2 in gathered_root
    assert two_ranks["meta_keys"] == sorted(k.removeprefix("model.") for k in two_ranks["plain_keys"])
    assert two_ranks["meta_keys_under_root"] == two_ranks["plain_keys"]
    assert two_ranks["meta_train"]["losses"] == pytest.approx(two_ranks["reference"]["losses"], abs=1e-5)


class OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def loss_grads_and_backward_ops(module, windows) -> tuple[torch.Tensor, dict[str, torch.Tensor], Counter]:
    """The loss, the gradients, and which aten ops ran during backward (where recomputation shows)."""
    loss = module(windows)
    with OpCounter() as counter:
        loss.backward()
    return loss.detach(), {k: p.grad for k, p in module.named_parameters()}, counter.ops


def test_activation_checkpointing_recomputes_without_changing_loss_or_grads():
    windows = data(1)[0]
    loss, grads, plain_ops = loss_grads_and_backward_ops(TrainModule(tiny_llama()), windows)
    ops = {}
    for mode in ("full", "selective"):
        module = parallelize(TrainModule(tiny_llama()), TrainConfig(activation_checkpointing=mode), CPU)
        assert all(type(b).ac_mode == mode for b in transformer_blocks(module.model))
        ac_loss, ac_grads, ops[mode] = loss_grads_and_backward_ops(module, windows)
        assert torch.equal(ac_loss, loss)
        for k, g in grads.items():
            torch.testing.assert_close(ac_grads[k], g, rtol=0, atol=1e-7)
    # full recomputes every block op in backward, matmuls included; selective keeps the matmul outputs and
    # recomputes only the cheap elementwise ops (here the RMSNorm's rsqrt)
    assert ops["full"]["mm"] > ops["selective"]["mm"] == plain_ops["mm"]
    assert ops["full"]["rsqrt"] == ops["selective"]["rsqrt"] > plain_ops["rsqrt"]


def test_state_dict_keys_stay_the_plain_hf_keys():
    """Checkpoints and the export load by HF key names: AC + regional compile must not rename anything."""
    plain = tiny_llama()
    module = parallelize(TrainModule(tiny_llama()), TrainConfig(activation_checkpointing="selective", compile=True),
                         CPU)
    assert list(module.state_dict()) == ["model." + k for k in plain.state_dict()]
    assert list(unwrap(module).model.state_dict()) == list(plain.state_dict())
    assert isinstance(transformer_blocks(module.model)[0], type(plain.model.layers[0]))
    missing, unexpected = plain.load_state_dict(module.model.state_dict())
    assert not missing and not unexpected


def hf_model(name: str, device: str = "meta"):
    from transformers import BertConfig, BertForMaskedLM, ModernBertConfig, ModernBertForMaskedLM

    if name == "llama":
        return tiny_llama(device)
    common = {"vocab_size": VOCAB, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
              "intermediate_size": 64, "max_position_embeddings": SEQ, "pad_token_id": 0}
    if name == "bert":
        cls, config = BertForMaskedLM, BertConfig(**common)
    else:
        cls, config = ModernBertForMaskedLM, ModernBertConfig(**common, eos_token_id=0, bos_token_id=0,
                                                              cls_token_id=0, sep_token_id=0)
    with torch.device(device):
        return cls(config)


@pytest.mark.parametrize("name", ["llama", "bert", "modernbert"])
def test_blocks_found_and_meta_buffers_recomputed(name):
    """Llama, BERT and ModernBERT: the blocks are found, and a meta-device model gets back the non-persistent
    buffers that to_empty leaves as garbage (RoPE tables, BERT position ids) even from an init that touches
    parameters only."""
    module = parallelize(TrainModule(hf_model(name)), TrainConfig(activation_checkpointing="full"), CPU,
                         init=init_params_only)
    blocks = transformer_blocks(module.model)
    assert len(blocks) == 2 and all(type(b).ac_mode == "full" for b in blocks)
    fresh = dict(hf_model(name, "cpu").named_buffers())
    buffers = dict(module.model.named_buffers())
    assert buffers.keys() == fresh.keys() and buffers
    for key, value in fresh.items():
        assert torch.equal(buffers[key], value), key


def test_unknown_model_and_meta_without_init_are_clear_errors():
    with pytest.raises(ValueError, match="no transformer blocks found in Linear"):
        transformer_blocks(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="meta device; pass init="):
        parallelize(TrainModule(tiny_llama("meta")), TrainConfig(), CPU)


def test_plain_module_sync_and_clip_match_torch():
    """Without a process group: gradient_sync does nothing, clip_grad_norm is torch's global norm and clip."""
    ours, theirs = TrainModule(tiny_llama()), TrainModule(tiny_llama())
    windows = data(1)[0]
    for module in (ours, theirs):
        with gradient_sync(module, enabled=False):
            module(windows).backward()
    norm = clip_grad_norm(ours, 0.5)
    expected = torch.nn.utils.clip_grad_norm_(theirs.parameters(), 0.5)
    assert torch.equal(norm, expected) and norm > 0.5
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(a.grad, b.grad)
    assert torch.equal(clip_grad_norm(ours, None), torch.nn.utils.get_total_norm([p.grad for p in ours.parameters()]))


def test_regional_compile_one_graph_for_every_block(monkeypatch):
    """Per-block compile with selective AC: one compiled graph serves both layers (no recompile per layer, no
    graph break) and the numbers match eager.

    With ``aot_eager``: Dynamo, AOTAutograd and the SAC policy, without inductor's code generation, whose first
    compile of even this tiny model takes 35-50 s on 2 busy cores (a 4-layer d=192 Llama's first step: 19-47 s
    cold, 4-8 s from a warm cache); inductor itself runs in tests/gpu/test_parallel_gpu.py."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    monkeypatch.setenv("PRETRAIN_COMPILE_BACKEND", "aot_eager")
    torch._dynamo.reset()
    counters.clear()
    windows = data(1)[0]
    loss, grads, _ = loss_grads_and_backward_ops(TrainModule(tiny_llama()), windows)
    cfg = TrainConfig(compile=True, activation_checkpointing="selective")
    module = parallelize(TrainModule(tiny_llama()), cfg, CPU)
    compiled_loss, compiled_grads, _ = loss_grads_and_backward_ops(module, windows)
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
    torch.testing.assert_close(compiled_loss, loss, rtol=1e-5, atol=1e-5)
    for k, g in grads.items():
        torch.testing.assert_close(compiled_grads[k], g, rtol=1e-4, atol=1e-5)
    import contextlib

    from pretrain.train.loop import Dist, evaluate_loss

    class Held:  # two held-out batches
        def batches(self, batch, max_batches):
            return [w.numpy() for w in data(2)]

    d = Dist(rank=0, world=1, local_rank=0, device=CPU)
    assert evaluate_loss(module, Held(), 2, 2, d, contextlib.nullcontext, seed=0) > 0
    assert counters["stats"]["unique_graphs"] == 1  # the loop's held-out pass runs eagerly: no second graph
    with torch.no_grad():  # a no-grad forward outside it is one more graph, still shared by both blocks
        assert module(windows).isfinite()
    assert counters["stats"]["unique_graphs"] == 2


def test_compile_cache_folder_kept_across_restarts(tmp_path, monkeypatch):
    """Inductor's FX-graph and AOTAutograd caches go to train.compile_cache, unless the user set
    TORCHINDUCTOR_CACHE_DIR (importing transformers' models writes inductor's /tmp default there: not the user)."""
    import torch._functorch.config
    import torch._inductor.config
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.setattr(torch._inductor.config, "fx_graph_cache", False)
    monkeypatch.setattr(torch._functorch.config, "enable_autograd_cache", False)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())
    assert enable_compile_cache(str(tmp_path / "cache")) == str(tmp_path / "cache")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "cache")
    assert torch._inductor.config.fx_graph_cache and torch._functorch.config.enable_autograd_cache
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert enable_compile_cache(str(tmp_path / "cache")) == str(tmp_path / "mine")
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert enable_compile_cache(None) == str(tmp_path / ".cache" / "pretrain" / "compile")
