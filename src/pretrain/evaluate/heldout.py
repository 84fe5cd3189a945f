"""Held-out metrics of an exported Hugging Face model on the validation token shards.

Causal LM: next-token loss, perplexity, bits per byte. Masked LM: the loss and accuracy at masked positions,
masked as in training (``train.mask_probability``, 80/10/10) with fixed seeds, so every evaluation of every
model sees the same masks; no bits per byte (a masked-token loss is not a code length of the text).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pretrain.tokens import SequentialWindows


@torch.no_grad()
def heldout_metrics(model, data: SequentialWindows, batch: int, max_batches: int) -> dict[str, float]:
    """Token-weighted mean loss, perplexity, and bits per byte (UTF-8 bytes of the held-out text)."""
    model.eval()
    nats, tokens = 0.0, 0
    for windows in data.batches(batch, max_batches):
        x = torch.from_numpy(windows)
        logits = model(input_ids=x[:, :-1]).logits
        loss = F.cross_entropy(logits.flatten(0, 1).float(), x[:, 1:].flatten(), reduction="sum")
        nats += loss.item()
        tokens += x[:, 1:].numel()
    loss = nats / max(tokens, 1)
    bytes_per_token = data.bytes / max(data.tokens, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50)),
            "bits_per_byte": loss / (math.log(2) * bytes_per_token), "tokens": float(tokens)}


@torch.no_grad()
def masked_heldout_metrics(model, data: SequentialWindows, batch: int, max_batches: int, *, probability: float,
                           special_ids: dict[str, int | None], vocab_size: int, seed: int) -> dict[str, float | None]:
    """Masked-token mean loss, perplexity and accuracy; batch i is masked by ``mask_seed(seed, "eval", i)``."""
    from pretrain.train.objectives import TrainModule, evaluate_sums, mask_seed

    module = TrainModule(model, "masked_lm", "chunked", probability, special_ids, vocab_size).eval()
    sums = torch.zeros(3, dtype=torch.float64)
    for i, windows in enumerate(data.batches(batch, max_batches)):
        sums += evaluate_sums(module, torch.from_numpy(windows), mask_seed(seed, "eval", i))
    loss_sum, count, correct = sums.tolist()
    loss = loss_sum / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50)), "masked_accuracy": correct / max(count, 1),
            "bits_per_byte": None, "tokens": count}


@torch.no_grad()
def generate_samples(model, tokenizer, prompts: list[str], max_new_tokens: int, seed: int) -> list[dict[str, str]]:
    model.eval()
    out = []
    for prompt in prompts:
        torch.manual_seed(seed)
        enc = tokenizer(prompt, return_tensors="pt")
        ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=True, temperature=0.8, top_k=50,
                             pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
        out.append({"prompt": prompt, "completion": tokenizer.decode(ids[0][enc["input_ids"].shape[1]:],
                                                                     skip_special_tokens=True)})
    return out
