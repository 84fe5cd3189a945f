"""Run by torchrun in tests: a real 2-process gloo group saves, prunes and restores DCP checkpoints."""

import os
import sys

import torch
import torch.distributed as dist

from pretrain import storage
from pretrain.config import ModelConfig, TrainConfig
from pretrain.model.build import build_model
from pretrain.model.parallel import parallelize, unwrap
from pretrain.train.checkpoint import CheckpointManager, ForeignCheckpoint
from pretrain.train.loop import init_distributed
from pretrain.train.objectives import TrainModule
from pretrain.train.schedule import build_scheduler


def make(seed):
    model = build_model(ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, seq_len=16),
                        vocab_size=64, eos_id=0, seed=seed)
    module = parallelize(TrainModule(model, "causal_lm"), TrainConfig(), torch.device("cpu"))
    opt = torch.optim.AdamW(module.parameters(), lr=1e-2)
    sched = build_scheduler(opt, TrainConfig(warmup_steps=2, max_steps=10))
    return module, opt, sched


def main(root: str, out: str) -> None:
    d = init_distributed("gloo")
    module, opt, sched = make(seed=0)
    model = unwrap(module).model
    ckpt = CheckpointManager(root, keep=2, fingerprint="fp")
    for step in (1, 2, 3):
        torch.manual_seed(step + d.rank)
        loss = module(torch.randint(0, 64, (2, 17)))
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        ckpt.save(step, model, opt, sched)
    if d.rank == 0:  # an interrupted save: files but no commit marker
        storage.write_text(storage.join(root, "step-0000004", "__0_0.distcp"), "partial")
    dist.barrier()
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    lr = sched.get_last_lr()[0]
    fresh_module, fresh_opt, fresh_sched = make(seed=123)
    fresh = unwrap(fresh_module).model
    step = CheckpointManager(root, keep=2, fingerprint="fp").restore(fresh, fresh_opt, fresh_sched)
    try:
        other_module, other_opt, other_sched = make(seed=5)
        CheckpointManager(root, keep=2, fingerprint="other").restore(unwrap(other_module).model, other_opt,
                                                                     other_sched)
        other = "resumed"
    except ForeignCheckpoint:
        other = "ForeignCheckpoint"
    same = all(torch.equal(saved[k], v) for k, v in fresh.state_dict().items())
    opt_state = fresh_opt.state_dict()["state"]
    if d.rank == 0:
        storage.write_json(out, {"step": step, "same_weights": same, "lr_restored": fresh_sched.get_last_lr()[0] == lr,
                                 "optimizer_steps": float(next(iter(opt_state.values()))["step"]),
                                 "other_fingerprint": other, "world": d.world})
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
    # Results written, process group destroyed: skip the interpreter's teardown, where gloo's threads were seen
    # to abort ("terminate called without an active exception") or hang under load, as pretrain.train does.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
