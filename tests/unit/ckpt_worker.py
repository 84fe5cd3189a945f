"""Run by torchrun in tests: a real 2-process gloo group saves, prunes and restores DCP checkpoints."""

import sys

import torch
import torch.distributed as dist

from pretrain import storage
from pretrain.config import ModelConfig, TrainConfig
from pretrain.model.build import build_model
from pretrain.model.parallel import parallelize, unwrap
from pretrain.train.checkpoint import CheckpointManager
from pretrain.train.loop import causal_lm_loss, init_distributed, lr_lambda


def make(seed):
    model = build_model(ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, seq_len=16),
                        vocab_size=64, eos_id=0, seed=seed)
    model = parallelize(model, TrainConfig(), torch.device("cpu"))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(2, 10, 0.1))
    return model, opt, sched


def main(root: str, out: str) -> None:
    d = init_distributed("gloo")
    model, opt, sched = make(seed=0)
    ckpt = CheckpointManager(root, keep=2, fingerprint="fp")
    for step in (1, 2, 3):
        torch.manual_seed(step + d.rank)
        loss = causal_lm_loss(model, torch.randint(0, 64, (2, 17)))
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        ckpt.save(step, model, opt, sched)
    if d.rank == 0:  # an interrupted save: files but no commit marker
        storage.write_text(storage.join(root, "step-0000004", "__0_0.distcp"), "partial")
    dist.barrier()
    saved = {k: v.detach().clone() for k, v in unwrap(model).state_dict().items()}
    lr = sched.get_last_lr()[0]
    fresh, fresh_opt, fresh_sched = make(seed=123)
    step = CheckpointManager(root, keep=2, fingerprint="fp").restore(fresh, fresh_opt, fresh_sched)
    other = CheckpointManager(root, keep=2, fingerprint="other").restore(*make(seed=5))
    same = all(torch.equal(saved[k], v) for k, v in unwrap(fresh).state_dict().items())
    opt_state = fresh_opt.state_dict()["state"]
    if d.rank == 0:
        storage.write_json(out, {"step": step, "same_weights": same, "lr_restored": fresh_sched.get_last_lr()[0] == lr,
                                 "optimizer_steps": float(next(iter(opt_state.values()))["step"]),
                                 "other_fingerprint_step": other, "world": d.world})
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
