"""Causal LM: predict token t+1 from tokens <= t over windows of seq_len+1 tokens.

The trunk (``model.base_model``) gives hidden states; the head's weight goes through
``linear_cross_entropy`` (``train.loss: chunked``) so B x L x V logits never exist at once, or the whole
model's ``logits`` go through ``F.cross_entropy`` (``plain``, and any model whose logits are more than
``lm_head(hidden)``, e.g. soft-capped). With ``document_ids`` attention stays within each document.
``z_loss`` (``train.z_loss``) adds PaLM's z-loss to the training loss in either path; ``sums`` (held-out
evaluation) is always pure cross-entropy.
"""

from __future__ import annotations

import torch

from pretrain.model.loss import cross_entropy, linear_cross_entropy, linear_cross_entropy_sums, logit_sums
from pretrain.model.masking import document_attention

# Model types whose causal-LM logits are exactly ``lm_head(base_model(...).last_hidden_state)``.
PLAIN_HEAD_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "gpt2", "gpt_neox", "olmo", "olmo2", "phi3",
                              "smollm3", "starcoder2"})


def supports_chunked(model) -> bool:
    head = model.get_output_embeddings()
    return (model.config.model_type in PLAIN_HEAD_TYPES and isinstance(head, torch.nn.Linear)
            and getattr(model.config, "final_logit_softcapping", None) is None)


def _inputs(windows: torch.Tensor, document_ids: torch.Tensor | None) -> dict:
    inputs = {"input_ids": windows[:, :-1], "use_cache": False}
    if document_ids is not None:
        mask, positions = document_attention(document_ids[:, :-1])
        inputs.update(attention_mask=mask, position_ids=positions)
    return inputs


def causal_loss(model, windows: torch.Tensor, document_ids: torch.Tensor | None = None, *, chunked: bool = True,
                sums: bool = False, z_loss: float = 0.0) -> torch.Tensor:
    """Mean next-token loss (+ ``z_loss``); ``sums``: [summed loss, tokens, correct argmax] (fp64) for held-out
    evaluation, without the z-loss."""
    inputs = _inputs(windows, document_ids)
    targets = windows[:, 1:].flatten()
    if not chunked:
        logits = model(**inputs).logits.flatten(0, 1)
        return logit_sums(logits, targets) if sums else cross_entropy(logits, targets, z_loss=z_loss)
    hidden = model.base_model(**inputs).last_hidden_state.flatten(0, 1)
    head = model.get_output_embeddings()
    if sums:
        return linear_cross_entropy_sums(hidden, head.weight, targets, bias=head.bias)
    return linear_cross_entropy(hidden, head.weight, targets, bias=head.bias, z_loss=z_loss)
