"""The anchor side of ``bench/train.py``: the Hugging Face ``Trainer`` on the same model, batches and schedule.

Run in a fresh process by the bench (never imports pretrain): reads ``config.json`` (the ``LlamaConfig`` our
recipe builds) and ``windows.npy`` (the very (steps x batch) windows of seq_len + 1 tokens our loader hands
our run, in order), trains ``--steps`` steps of ``--batch`` in bf16 autocast (``--compile``: plus
``torch_compile=True``, the Trainer's whole-model ``torch.compile``), AdamW with our lr, betas, weight decay,
warmup and cosine to 10%, gradient clipping at 1.0, one process with ``--threads`` threads, no eval, no
saving, no reporting. Prints one JSON line last: the time between consecutive step ends (data loading,
forward, backward, clipping, optimizer and scheduler: all of a step), the parameter count, and the losses.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", required=True, help="folder with config.json and windows.npy")
    p.add_argument("--out", required=True, help="the Trainer's output_dir (nothing is saved there)")
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--lr", type=float, required=True)
    p.add_argument("--betas", type=float, nargs=2, required=True)
    p.add_argument("--weight-decay", type=float, required=True)
    p.add_argument("--warmup", type=int, required=True)
    p.add_argument("--min-lr-ratio", type=float, required=True)
    p.add_argument("--compile", action="store_true")
    args = p.parse_args(argv)

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments

    work = Path(args.work)
    windows = torch.from_numpy(np.load(work / "windows.npy").astype(np.int64))  # (steps * batch, seq_len + 1)

    class Windows(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(windows)

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            w = windows[i, :-1]  # the model shifts labels itself
            return {"input_ids": w, "labels": w}

    class InOrder(Trainer):
        """Our batches in our order (the default sampler shuffles: same cost, other batches)."""

        def _get_train_sampler(self, *_args, **_kwargs):
            return torch.utils.data.SequentialSampler(self.train_dataset)

    ends: list[float] = []
    epoch_ends: list[float] = []
    losses: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_end(self, targs, state, control, **kw) -> None:
            ends.append(time.perf_counter())
            epoch_ends.append(time.time())

        def on_log(self, targs, state, control, logs=None, **kw) -> None:
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    config = LlamaConfig.from_json_file(str(work / "config.json"))
    model = LlamaForCausalLM(config)
    targs = TrainingArguments(
        output_dir=args.out, per_device_train_batch_size=args.batch, max_steps=args.steps,
        learning_rate=args.lr, adam_beta1=args.betas[0], adam_beta2=args.betas[1], weight_decay=args.weight_decay,
        warmup_steps=args.warmup, lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": args.min_lr_ratio}, max_grad_norm=1.0, bf16=True,
        torch_compile=args.compile, use_cpu=True, dataloader_num_workers=0, save_strategy="no",
        eval_strategy="no", report_to=[], logging_steps=20, disable_tqdm=True, seed=0)
    start, train_call = time.perf_counter(), time.time()
    InOrder(model=model, args=targs, train_dataset=Windows(), callbacks=[StepTimer()]).train()
    train_s = time.perf_counter() - start
    step_seconds = [b - a for a, b in zip([start, *ends[:-1]], ends, strict=True)]
    print(json.dumps({"step_seconds": step_seconds, "train_seconds": train_s, "losses": losses,
                      "train_call": train_call, "step_ends": epoch_ends,
                      "parameters": sum(t.numel() for t in model.parameters()),
                      "optimizer": str(targs.optim), "attention": config._attn_implementation}))


if __name__ == "__main__":
    main()
