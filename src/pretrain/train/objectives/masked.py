"""Masked LM (BERT's objective): corrupt ``mask_probability`` of the tokens, predict the originals.

Of the chosen positions 80% become the mask token, 10% a random real token, 10% stay; special tokens are
never chosen. The choice comes from a CPU ``torch.Generator`` seeded with ``mask_seed`` (the loop derives it
from seed, step, rank and micro-batch), so a resumed run masks exactly as the first one did, on any device.
Only the chosen positions reach the head: their hidden states are gathered before the head transform and
decoder, so no B x L x V logits exist (about 15% of them with ``plain``).

Document masking: attention stays within each document (bidirectionally) and positions restart per
document. BERT takes the 4D mask as is; ModernBERT takes one mask per layer type, so its sliding-window
layers get the document mask cut to their window.
"""

from __future__ import annotations

import torch

from pretrain.model.loss import cross_entropy, linear_cross_entropy, linear_cross_entropy_sums, logit_sums

MASK_FRACTION, RANDOM_FRACTION = 0.8, 0.1  # of the chosen positions; the rest keep their token


def special_token_ids(special_ids: dict[str, int | None]) -> list[int]:
    return sorted({int(v) for k, v in special_ids.items() if k in ("eos", "pad", "mask") and v is not None})


def mask_tokens(tokens: torch.Tensor, probability: float, special_ids: dict[str, int | None], vocab_size: int,
                seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(corrupted tokens, labels: the original token where chosen, -100 elsewhere), on the CPU."""
    gen = torch.Generator().manual_seed(int(seed))
    cpu = tokens.detach().to("cpu", torch.long)
    specials = torch.tensor(special_token_ids(special_ids), dtype=torch.long)
    choose, kind = torch.rand(cpu.shape, generator=gen), torch.rand(cpu.shape, generator=gen)
    allowed = torch.ones(vocab_size, dtype=torch.bool)
    allowed[specials[specials < vocab_size]] = False
    allowed = allowed.nonzero().squeeze(1)
    random = allowed[torch.randint(len(allowed), cpu.shape, generator=gen)]
    chosen = (choose < probability) & ~torch.isin(cpu, specials)
    corrupted = torch.where(chosen & (kind < MASK_FRACTION), int(special_ids["mask"]), cpu)
    corrupted = torch.where(chosen & (kind >= MASK_FRACTION) & (kind < MASK_FRACTION + RANDOM_FRACTION), random,
                            corrupted)
    return corrupted, torch.where(chosen, cpu, -100)


def encoder_parts(model):
    """(trunk, head transform, decoder Linear) of encoders whose logits are decoder(transform(hidden)), else None."""
    kind = model.config.model_type
    if kind == "modernbert":
        return model.model, model.head, model.decoder
    if kind == "bert":
        return model.bert, model.cls.predictions.transform, model.cls.predictions.decoder
    return None


def document_positions(document_ids: torch.Tensor) -> torch.Tensor:
    """Position ids restarting at each document's first token (as ``document_attention`` gives them)."""
    index = torch.arange(document_ids.shape[1], device=document_ids.device)
    starts = torch.ones_like(document_ids, dtype=torch.bool)
    starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    return index - torch.where(starts, index, torch.zeros_like(index)).cummax(dim=1).values


def encoder_attention(model, document_ids: torch.Tensor) -> tuple[object, torch.Tensor]:
    """(attention mask for ``model``: bidirectional within each document, position ids restarting per document)."""
    positions = document_positions(document_ids)
    mask = (document_ids[:, :, None] == document_ids[:, None, :])[:, None]
    types = set(getattr(model.config, "layer_types", None) or [])
    if "sliding_attention" in types:  # ModernBERT: its local layers see a window of +-sliding_window tokens
        index = torch.arange(document_ids.shape[1], device=document_ids.device)
        band = (index[None, :] - index[:, None]).abs() <= model.config.sliding_window
        return {"full_attention": mask, "sliding_attention": mask & band}, positions
    return mask, positions


def masked_loss(model, windows: torch.Tensor, document_ids: torch.Tensor | None, *, probability: float,
                special_ids: dict[str, int | None], vocab_size: int, seed: int, chunked: bool = True,
                sums: bool = False, device: torch.device | None = None, z_loss: float = 0.0) -> torch.Tensor:
    """Mean loss (+ ``z_loss``, as the causal objective) over the chosen positions of windows[:, :-1]; ``sums``:
    [summed loss, chosen, correct] (fp64), without the z-loss.

    The masks are drawn on the CPU: windows given on the CPU (``device``: the model's) cost no device sync;
    windows on the device are copied back first (a sync), since the gather's size depends on them.
    """
    corrupted, labels = mask_tokens(windows[:, :-1], probability, special_ids, vocab_size, seed)
    labels = labels.flatten()
    rows = (labels != -100).nonzero().squeeze(1)
    device = device or windows.device
    if document_ids is not None:
        document_ids = document_ids.to(device, non_blocking=True)
    targets = labels[rows].to(device, non_blocking=True)
    rows = rows.to(device, non_blocking=True)
    inputs: dict[str, object] = {"input_ids": corrupted.to(device, non_blocking=True)}
    if document_ids is not None:
        inputs["attention_mask"], inputs["position_ids"] = encoder_attention(model, document_ids[:, :-1])
    parts = encoder_parts(model)
    if parts is None:  # another masked LM (init_from): its full logits, then the chosen rows
        logits = model(**inputs).logits.flatten(0, 1).index_select(0, rows)
        return _finish(logits, targets, sums, z_loss)
    trunk, transform, decoder = parts
    hidden = trunk(**inputs).last_hidden_state.flatten(0, 1).index_select(0, rows)
    hidden = transform(hidden)
    if not chunked:
        return _finish(decoder(hidden), targets, sums, z_loss)
    if sums:
        return linear_cross_entropy_sums(hidden, decoder.weight, targets, bias=decoder.bias)
    return linear_cross_entropy(hidden, decoder.weight, targets, bias=decoder.bias, z_loss=z_loss)


def _finish(logits: torch.Tensor, targets: torch.Tensor, sums: bool, z_loss: float = 0.0) -> torch.Tensor:
    if sums:
        return logit_sums(logits, targets)
    return cross_entropy(logits, targets, reduction="sum", z_loss=z_loss) / max(1, targets.numel())
