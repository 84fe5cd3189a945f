"""Training-loop throughput on this machine: pretrain's loop vs the Hugging Face ``Trainer``.

Runs with no arguments: builds a synthetic token corpus, trains the same Llama-style model for the
same steps with both, single process, in fp32 and in bf16 autocast, and prints one JSON line last
with ``tokens_per_second`` (ours), ``hf_trainer_tokens_per_second`` (the anchor) and their ``ratio``
(suffixed ``_bf16`` for bf16). Step times are medians after warm-up.
Needs ``accelerate`` for the Trainer (``pip install -e .[bench]``).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

STEPS, WARMUP, BATCH, SEQ = 40, 10, 16, 256
MODEL = ["model.hidden_size=192", "model.num_layers=4", "model.num_heads=6", "model.intermediate_size=512",
         f"model.seq_len={SEQ}"]


def ours(root: str, precision: str) -> float:
    from synthetic import write_synthetic_run

    from pretrain.train.loop import train

    recipe, _ = write_synthetic_run(root, [*MODEL, f"train.max_steps={STEPS}", f"train.micro_batch_size={BATCH}",
                                           "train.log_interval=1", "train.eval_interval=100000",
                                           "train.checkpoint_interval=100000", "train.eval_batches=1",
                                           f"train.precision={precision}"],
                                    vocab=4096, docs=64, doc_len=2048)
    rows = train(recipe)["history"]
    return statistics.median(r["tokens_per_second"] for r in rows if "tokens_per_second" in r and r["step"] > WARMUP)


def hf_trainer(root: str, precision: str) -> float:
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from pretrain.config import load_recipe
    from pretrain.model.build import build_model
    from pretrain.tokens import ShardRef, TokenLoader, read_header

    recipe = load_recipe("tiny", MODEL)
    shard = str(Path(root) / "tokens" / "train" / "part-00000")
    data = TokenLoader([ShardRef(shard, "", read_header(shard)["tokens"])], SEQ, seed=0)

    class Windows(torch.utils.data.Dataset):
        def __len__(self):
            return STEPS * BATCH

        def __getitem__(self, i):
            w = torch.from_numpy(data.batch(i, 0, 1, 1).tokens[0])
            return {"input_ids": w[:-1], "labels": w[:-1]}

    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t)

    args = TrainingArguments(output_dir=str(Path(root) / "hf"), per_device_train_batch_size=BATCH, max_steps=STEPS,
                             learning_rate=3e-3, lr_scheduler_type="cosine", warmup_steps=5, weight_decay=0.1,
                             logging_steps=10, report_to=[], save_strategy="no", use_cpu=True,
                             dataloader_num_workers=0, disable_tqdm=True, bf16=precision == "bf16")
    model = build_model(recipe.model, 4096, 0)
    Trainer(model=model, args=args, train_dataset=Windows(), callbacks=[StepTimer()]).train()
    return BATCH * SEQ / statistics.median(times[WARMUP:])


def main() -> None:
    os.environ.pop("RANK", None)
    result: dict[str, object] = {}
    for precision, suffix in (("fp32", ""), ("bf16", "_bf16")):
        with tempfile.TemporaryDirectory() as tmp:
            mine, anchor = ours(tmp, precision), hf_trainer(tmp, precision)
        result.update({f"tokens_per_second{suffix}": round(mine),
                       f"hf_trainer_tokens_per_second{suffix}": round(anchor),
                       f"ratio{suffix}": round(mine / anchor, 3)})
    print(json.dumps({**result, "steps": STEPS, "batch": BATCH, "seq_len": SEQ, "processes": 1}))


if __name__ == "__main__":
    main()
