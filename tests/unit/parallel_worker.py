"""Run by torchrun in tests: DDP and FSDP2 in a real 2-process gloo group train like one process on the whole
batch (with and without gradient accumulation), and a meta-device model sharded by FSDP2 (with selective AC)
gets the same init and trains the same.

Also imported by test_parallel.py for the tiny model and the TrainModule stand-in.
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.config import ModelConfig, TrainConfig

VOCAB, SEQ, BATCH, STEPS = 64, 16, 4, 5
SHAPE = ModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, seq_len=SEQ)


class TrainModule(nn.Module):
    """Stand-in for the loop's TrainModule: the HF model as its only child, forward returns the mean loss."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, windows, document_ids=None, mask_seed=None, sums=False):
        logits = self.model(input_ids=windows[:, :-1]).logits
        loss = F.cross_entropy(logits.flatten(0, 1).float(), windows[:, 1:].flatten())
        if sums:  # [summed loss, tokens, correct], as the loop's held-out pass asks
            count = windows[:, 1:].numel()
            return torch.stack([loss.double() * count, torch.tensor(count, dtype=torch.float64),
                                torch.tensor(0.0, dtype=torch.float64)])
        return loss


def init(model: nn.Module) -> None:
    """Stand-in for build.init_weights: the HF init from seed 0 (it also recomputes the rotary buffers)."""
    torch.manual_seed(0)
    model.init_weights()


def init_params_only(model: nn.Module) -> None:
    """An init that never touches buffers: the rotary buffers must come from parallelize itself."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)


def tiny_llama(device: str = "cpu", shape: ModelConfig = SHAPE, initializer=init) -> nn.Module:
    """The tiny Llama built on the meta device, then (unless ``device='meta'``) materialized and initialized."""
    from transformers import LlamaForCausalLM

    from pretrain.model.build import llama_config

    with torch.device("meta"):
        model = LlamaForCausalLM(llama_config(shape, VOCAB, eos_id=0))
    if device != "meta":
        model.to_empty(device=device)
        initializer(model)
        model.tie_weights()
    return model


def data(steps: int = STEPS) -> torch.Tensor:
    return torch.randint(0, VOCAB, (steps, BATCH, SEQ + 1), generator=torch.Generator().manual_seed(1))


def train(module: nn.Module, windows: torch.Tensor, micro: int = 1, world: int = 1, rank: int = 0) -> dict:
    """AdamW steps on this rank's rows of each batch in ``micro`` micro-batches, each after a no-grad forward
    (as the loop's eval at step 0 and every eval_interval); the loss is the group mean."""
    import torch.distributed as dist

    from pretrain.model.parallel import clip_grad_norm, gradient_sync

    opt = torch.optim.AdamW(module.parameters(), lr=1e-2)
    losses, norms, early = [], [], []
    for batch in windows:
        rows = batch.chunk(world)[rank]
        with torch.no_grad():  # an eval before a step must not leave FSDP2 units gathered (stale next step)
            module(rows)
        total = torch.zeros(())
        for i, part in enumerate(rows.chunk(micro)):
            with gradient_sync(module, enabled=i == micro - 1):
                loss = module(part) / micro
            loss.backward()  # after the with, as the loop does
            total += loss.detach()
            if i < micro - 1:
                early.append(reduced_already(module, world))
        norms.append(clip_grad_norm(module, 1.0).item())
        opt.step()
        opt.zero_grad(set_to_none=True)
        if world > 1:
            dist.all_reduce(total)
            total /= world
        losses.append(total.item())
    return {"losses": losses, "norms": norms, "reduced_early": any(early)}


def reduced_already(module: nn.Module, world: int) -> bool:
    """Whether a gradient reduction already ran: FSDP2 then holds sharded gradients, DDP equal ones on all ranks
    (each rank's own rows give different local gradients)."""
    import torch.distributed as dist
    from torch.distributed.fsdp import FSDPModule

    if isinstance(module, FSDPModule):
        return any(p.grad is not None for p in module.parameters())
    local = torch.stack([p.grad.norm() for p in module.parameters() if p.grad is not None]).sum().reshape(1)
    gathered = [torch.zeros(1) for _ in range(world)]
    dist.all_gather(gathered, local)
    return all(torch.allclose(g, gathered[0]) for g in gathered)


def full_weights(module: nn.Module) -> dict[str, torch.Tensor]:
    """Plain tensors by HF key (FSDP2's DTensor shards gathered)."""
    from torch.distributed.tensor import DTensor

    from pretrain.model.parallel import hf_model_of, unwrap

    return {k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().clone()
            for k, v in hf_model_of(unwrap(module)).state_dict().items()}


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def main(out: str) -> None:
    import torch.distributed as dist

    from pretrain.model.parallel import gathered_root, parallelize

    dist.init_process_group("gloo")
    rank, world, device = dist.get_rank(), dist.get_world_size(), torch.device("cpu")
    torch.set_num_threads(1)
    windows, result = data(), {"world": world}
    reference = TrainModule(tiny_llama())
    start = full_weights(reference)
    result["reference"] = train(reference, windows)
    end = full_weights(reference)
    for parallel in ("ddp", "fsdp"):
        for micro in (1, 2):
            module = parallelize(TrainModule(tiny_llama()), TrainConfig(parallel=parallel), device)
            run = train(module, windows, micro=micro, world=world, rank=rank)
            run["weights_diff"] = max_diff(full_weights(module), end)
            result[f"{parallel}_micro{micro}"] = run
    cfg = TrainConfig(parallel="fsdp", init_device="meta", activation_checkpointing="selective")
    meta = parallelize(TrainModule(tiny_llama("meta")), cfg, device, init=init)
    result["meta_keys"] = sorted(full_weights(meta))
    result["meta_keys_under_root"] = sorted(meta.state_dict())
    result["plain_keys"] = sorted("model." + k for k in reference.model.state_dict())
    result["meta_weights_diff"] = max_diff(full_weights(meta), start)
    result["meta_tied"] = meta.model.lm_head.weight is meta.model.model.embed_tokens.weight
    plain = tiny_llama()
    rotary, fresh = meta.model.model.rotary_emb, plain.model.rotary_emb
    result["meta_rotary_equal"] = torch.equal(rotary.inv_freq, fresh.inv_freq) and torch.equal(
        rotary.original_inv_freq, fresh.original_inv_freq)
    prompt = windows[0][:1, :4]
    with torch.no_grad(), gathered_root(meta):  # the HF model alone, as generation at eval would run it
        result["meta_logits_diff"] = (meta.model(windows[0]).logits - plain(windows[0]).logits).abs().max().item()
        result["generate_equal"] = torch.equal(meta.model.generate(prompt, max_new_tokens=3, do_sample=False),
                                               plain.generate(prompt, max_new_tokens=3, do_sample=False))
    result["meta_train"] = train(meta, windows, world=world, rank=rank)
    if rank == 0:
        with open(out, "w") as f:
            json.dump(result, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
    # Results written, process group destroyed: skip the interpreter's teardown, where gloo's threads were seen
    # to abort ("terminate called without an active exception") or hang under load, as pretrain.train does.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
