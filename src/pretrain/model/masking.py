"""Attention within documents for packed windows: a block-diagonal causal mask and positions per document.

A window packs several documents end to end; by default a token attends to every earlier token of the
window, across document boundaries. With ``train.document_masking`` each token attends only to earlier
tokens of its own document and its position restarts at the document's first token, so a packed window
trains as the documents would alone (tested against unpacked forward passes). The mask is a boolean
``[batch, 1, L, L]`` tensor that Hugging Face models take as ``attention_mask`` (SDPA and eager): it costs
B * L^2 bytes per micro-batch (32 MiB at 8 x 2048). Held-out evaluation reads plain packed windows.
"""

from __future__ import annotations

import torch


def document_attention(document_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask [B, 1, L, L] bool: causal and within one document, position ids [B, L] restarting per document)."""
    length = document_ids.shape[1]
    index = torch.arange(length, device=document_ids.device)
    causal = index[None, :] <= index[:, None]
    mask = causal & (document_ids[:, :, None] == document_ids[:, None, :])
    starts = torch.ones_like(document_ids, dtype=torch.bool)
    starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    first = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=1).values
    return mask[:, None], index - first
