"""Held-out metrics of an exported Hugging Face model on the validation token shards.

Causal LM: next-token loss, perplexity, bits per byte. Masked LM: the loss and accuracy at masked positions,
masked as in training (``train.mask_probability``, 80/10/10) with fixed seeds, so every evaluation of every
model sees the same masks; no bits per byte (a masked-token loss is not a code length of the text).

``heldout_by_source`` measures each source of the mixture apart (its own validation shards, at most
``max_batches`` batches each, so a small source is not crowded out by a large one) and overall (token-weighted
over the sources). Bits per byte converts a source's loss with that source's own bytes per token: nats per token
/ ln 2 x (tokens / UTF-8 bytes) of its validation split, as in the Pile paper, so tokenizers compare fairly.
"""

from __future__ import annotations

import collections
import math
from typing import Any

import torch
import torch.nn.functional as F

from pretrain.manifest import Manifest
from pretrain.tokens import SequentialWindows, ShardRef, read_header


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


def val_shards_by_source(tokens: Manifest) -> dict[str, list[ShardRef]]:
    """The validation token shards of each source (the shard's meta names it; older manifests: its header)."""
    out: dict[str, list[ShardRef]] = collections.defaultdict(list)
    for s in tokens.shards:
        if s.meta.get("split") != "val":
            continue
        source = s.meta.get("source") or str(read_header(s.url).get("source") or "")
        out[source].append(ShardRef(s.url, source, int(s.rows)))
    return dict(sorted(out.items()))


def _device(model) -> torch.device:
    return getattr(model, "device", None) or next(model.parameters()).device


def _causal_sums(model, data: SequentialWindows, batch: int, max_batches: int) -> tuple[float, int]:
    """Summed next-token nats and the number of targets over the first ``max_batches`` batches."""
    nats, count, device = 0.0, 0, _device(model)
    for windows in data.batches(batch, max_batches):
        x = torch.from_numpy(windows).to(device)
        logits = model(input_ids=x[:, :-1]).logits
        nats += F.cross_entropy(logits.flatten(0, 1).float(), x[:, 1:].flatten(), reduction="sum").item()
        count += x[:, 1:].numel()
    return nats, count


def _row(nats: float, count: int, bits_per_byte: float | None, correct: float | None = None) -> dict[str, Any]:
    loss = nats / count
    row: dict[str, Any] = {"loss": loss, "perplexity": math.exp(min(loss, 50)), "bits_per_byte": bits_per_byte,
                           "tokens": int(count)}
    if correct is not None:
        row["masked_accuracy"] = correct / count
    return row


def _empty(reason: str, masked: bool) -> dict[str, Any]:
    row: dict[str, Any] = {"loss": None, "perplexity": None, "bits_per_byte": None, "tokens": 0, "skipped": reason}
    return {**row, "masked_accuracy": None} if masked else row


@torch.no_grad()
def heldout_by_source(model, tokens: Manifest, seq_len: int, batch: int, max_batches: int,
                      objective: str = "causal_lm", *, probability: float = 0.15,
                      special_ids: dict[str, int | None] | None = None, vocab_size: int | None = None,
                      seed: int = 0) -> dict[str, Any]:
    """``{"overall": row, "by_source": {source: row}}`` on the validation shards of ``tokens``.

    A row: ``loss`` (mean nats per scored token), ``perplexity`` = exp(loss), ``bits_per_byte`` (None for masked
    LM), ``tokens`` scored; masked LM adds ``masked_accuracy``. Masked LM masks source s's batch i with
    ``mask_seed(seed, "eval", s, i)``: the same masks for every model. A source whose validation split holds no
    full window of ``seq_len + 1`` tokens gets a row of None with ``tokens`` 0 and the reason in ``skipped``;
    when no source has one it is an error naming the shards.
    """
    masked = objective == "masked_lm"
    if objective not in ("causal_lm", "masked_lm"):
        raise ValueError(f"heldout_by_source: unknown objective {objective!r} (causal_lm or masked_lm)")
    module = None
    if masked:
        from pretrain.train.objectives import TrainModule, evaluate_sums, mask_seed

        if special_ids is None or vocab_size is None:
            raise ValueError("heldout_by_source: masked_lm needs special_ids and vocab_size (as in training)")
        module = TrainModule(model, "masked_lm", "chunked", probability, special_ids, vocab_size).eval()
    model.eval()
    by_source: dict[str, dict[str, Any]] = {}
    total = {"nats": 0.0, "count": 0, "bytes": 0.0, "correct": 0.0}
    shards = val_shards_by_source(tokens)
    for source, refs in shards.items():
        try:
            data = SequentialWindows(refs, seq_len)
        except ValueError as err:
            by_source[source] = _empty(str(err), masked)
            continue
        try:
            if masked:
                sums = torch.zeros(3, dtype=torch.float64)
                for i, windows in enumerate(data.batches(batch, max_batches)):
                    sums += evaluate_sums(module, torch.from_numpy(windows), mask_seed(seed, "eval", source, i))
                nats, count, correct = sums.tolist()
                count = int(count)
            else:
                nats, count = _causal_sums(model, data, batch, max_batches)
                correct = None
        finally:
            data.close()
        if not count:
            by_source[source] = _empty("no token was scored", masked)
            continue
        scored_bytes = count * data.bytes / max(data.tokens, 1)  # this source's bytes per scored token
        bpb = None if masked or not scored_bytes else nats / (math.log(2) * scored_bytes)
        by_source[source] = _row(nats, count, bpb, correct)
        total["nats"] += nats
        total["count"] += count
        total["bytes"] += scored_bytes
        total["correct"] += correct or 0.0
    if not total["count"]:
        urls = [r.url for refs in shards.values() for r in refs]
        raise ValueError(f"held-out: no validation shard holds seq_len+1={seq_len + 1} tokens: {urls or 'none'}")
    overall_bpb = None if masked else total["nats"] / (math.log(2) * total["bytes"])
    overall = _row(total["nats"], total["count"], overall_bpb, total["correct"] if masked else None)
    return {"overall": overall, "by_source": by_source}
