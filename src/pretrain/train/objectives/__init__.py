"""Training objectives as one ``nn.Module`` around the Hugging Face model: causal LM and masked LM here, the
contrastive ones (SimCLR, CLIP) in ``contrastive.ContrastiveModule``.

``TrainModule`` is what DDP / FSDP2 / torch.compile wrap: its only child is the HF model (``.model``), so its
state-dict keys are ``model.`` + the HF keys, and the objective runs entirely inside its ``forward``
(wrappers' hooks see every use of the weights, including the head's weight in the chunked loss).
``forward`` returns the mean training loss (plus ``train.z_loss``'s term); with ``sums=True`` it returns, for
held-out evaluation, pure cross-entropy: [summed loss, counted tokens, correct argmax predictions] (fp64), summed
across batches and ranks by the caller.
"""

from __future__ import annotations

import hashlib

import torch

from pretrain.config import RecipeError
from pretrain.train.objectives.causal import causal_loss, supports_chunked
from pretrain.train.objectives.masked import encoder_parts, masked_loss

OBJECTIVES = ("causal_lm", "masked_lm")


def mask_seed(seed: int, *parts: int | str) -> int:
    """A 63-bit seed from the run seed and e.g. (step, rank, micro) or ("eval", batch): same inputs, same masks."""
    digest = hashlib.blake2b(repr((int(seed), *parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class TrainModule(torch.nn.Module):
    """The HF model plus its objective; ``forward(windows [B, L+1], document_ids, mask_seed) -> mean loss``.

    ``windows`` (and ``document_ids``) may be on the CPU or the model's device; they are moved to the model's.
    For masked LM pass them on the CPU (pinned): the masks are drawn there, and device windows would be
    copied back first (a device sync per micro-batch).
    """

    def __init__(self, model: torch.nn.Module, objective: str, loss: str = "chunked", mask_probability: float = 0.15,
                 special_ids: dict[str, int | None] | None = None, vocab_size: int | None = None, *,
                 tokenizer: str | None = None, z_loss: float = 0.0):
        super().__init__()
        if objective not in OBJECTIVES:
            raise RecipeError(f"train.objective: {objective!r} is not one of {', '.join(OBJECTIVES)}")
        if loss not in ("chunked", "plain"):
            raise RecipeError(f"train.loss: {loss!r} is not chunked or plain")
        self.model = model
        self.objective = objective
        self.special_ids = dict(special_ids or {})
        self.vocab_size = int(vocab_size or model.get_input_embeddings().weight.shape[0])
        self.mask_probability = float(mask_probability)
        self.z_loss = float(z_loss)
        if objective == "masked_lm":
            if self.special_ids.get("mask") is None:
                raise RecipeError(f"train.objective masked_lm: the tokenizer ({tokenizer or 'of this run'}) has no "
                                  "mask token (mask_token in its config, or <|mask|>)")
            chunked_ok = encoder_parts(model) is not None
        else:
            chunked_ok = supports_chunked(model)
        # What runs: the chunked loss where the model's head allows it (see causal.PLAIN_HEAD_TYPES), else plain.
        self.loss = "chunked" if loss == "chunked" and chunked_ok else "plain"

    @classmethod
    def from_recipe(cls, model: torch.nn.Module, recipe, special_ids: dict[str, int | None], vocab_size: int,
                    tokenizer: str | None = None) -> TrainModule:
        t = recipe.train
        return cls(model, t.objective, t.loss, t.mask_probability, special_ids, vocab_size, tokenizer=tokenizer,
                   z_loss=t.z_loss)

    def forward(self, windows: torch.Tensor, document_ids: torch.Tensor | None = None, mask_seed: int | None = None,
                sums: bool = False) -> torch.Tensor:
        device = self.model.get_input_embeddings().weight.device
        windows = windows.long()
        chunked = self.loss == "chunked"
        if self.objective == "causal_lm":
            if document_ids is not None:
                document_ids = document_ids.to(device, non_blocking=True)
            return causal_loss(self.model, windows.to(device, non_blocking=True), document_ids, chunked=chunked,
                               sums=sums, z_loss=self.z_loss)
        if mask_seed is None:  # the loop passes one; without it, the global RNG decides
            mask_seed = int(torch.randint(0, 2**62, (1,)).item())
        return masked_loss(self.model, windows, document_ids, probability=self.mask_probability,
                           special_ids=self.special_ids, vocab_size=self.vocab_size, seed=mask_seed,
                           chunked=chunked, sums=sums, device=device, z_loss=self.z_loss)

    def evaluate(self, windows: torch.Tensor, mask_seed: int | None = None) -> torch.Tensor:
        """[summed loss, tokens, correct] (fp64) without gradients; on a wrapped module call
        ``evaluate_sums(wrapped, ...)`` instead, so the wrapper's hooks run."""
        return evaluate_sums(self, windows, mask_seed)


@torch.no_grad()
def evaluate_sums(module: torch.nn.Module, inputs: torch.Tensor | tuple, mask_seed: int | None = None) -> torch.Tensor:
    """Held-out [summed loss, tokens (or anchors), correct] (fp64) through ``module``'s forward (DDP/FSDP2-wrapped
    or not); ``inputs``: token windows, or a tuple of the module's inputs (an image batch's)."""
    if isinstance(inputs, tuple):
        return module(*inputs, mask_seed=mask_seed, sums=True)
    return module(inputs, None, mask_seed, sums=True)


def trained_part(module: torch.nn.Module) -> torch.nn.Module:
    """What the optimizer and checkpoints hold, of an unwrapped objective module: a text objective's HF model (its
    checkpoint keys are the HF names), or a contrastive module whole (``model.`` + HF names, and SimCLR's
    ``head.``)."""
    from pretrain.train.objectives.contrastive import ContrastiveModule

    return module if isinstance(module, ContrastiveModule) else module.model
