"""Cross-entropy of a linear head that never materializes all N x V logits (``train.loss: chunked``).

The plain path computes ``hidden @ weight.T`` for every row at once: N x V logits in the compute dtype,
an fp32 copy for the softmax, and its gradient, several GiB at a 128k vocabulary. Here the rows go
through in chunks: logits of a chunk -> log-softmax in fp32 -> loss, and the gradient of the chunk's
logits (softmax - one-hot) immediately turns into its share of grad_hidden and grad_weight, which the
forward keeps; backward only scales them by grad_output. That is the "fused linear cross entropy" of
Liger-Kernel: the same three matmuls as the plain path, no recomputation, and at most one chunk of logits
alive. Under autocast the matmuls run in the autocast dtype (as the plain path's would) and grad_weight
accumulates in fp32. The weight is an ordinary autograd input, so a tied embedding gets both gradients and
DDP / FSDP2 see nothing special.

``z_loss`` (PaLM, ``train.z_loss``) adds ``z * lse**2`` per scored row, lse = logsumexp of the row's logits: it
pulls the softmax normalizer towards 0 so bf16 logits stay well-conditioned. Its logit gradient,
``2 * z * lse * softmax``, joins the cross-entropy's in the same pass, so it costs no extra matmul.
"""

from __future__ import annotations

import math

import torch

# Rows per chunk: sized so a chunk's logits hold about as many elements as the hidden states (Liger's rule),
# within these bounds (small chunks starve the matmuls; large ones are what chunking avoids).
MIN_CHUNK_ROWS = 512
MAX_CHUNK_ROWS = 8192


def chunk_rows(n: int, hidden: int, vocab: int) -> int:
    rows = 1 << max(0, math.ceil(math.log2(max(1, math.ceil(n * hidden / vocab)))))
    return max(1, min(n, max(MIN_CHUNK_ROWS, min(MAX_CHUNK_ROWS, rows))))


def _compute_dtype(hidden: torch.Tensor) -> torch.dtype:
    device = hidden.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return hidden.dtype


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, ignore_index: int, rows: int, reduction: str,
                dtype: torch.dtype, z_loss: float):
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(dtype)
            b = bias.to(dtype) if bias is not None else None
            valid = targets != ignore_index
            safe = torch.where(valid, targets, torch.zeros_like(targets))
            scale = valid.sum().clamp(min=1).float() if reduction == "mean" else torch.ones((), device=hidden.device)
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            grad_h = torch.empty_like(hidden) if need_h else None
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
            grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
            for start in range(0, hidden.shape[0], rows):
                end = min(start + rows, hidden.shape[0])
                h = hidden[start:end].to(dtype)
                logits = (h @ w.t() if b is None else torch.addmm(b, h, w.t())).float()
                lse = logits.logsumexp(dim=-1)
                picked = logits.gather(1, safe[start:end, None]).squeeze(1)
                keep = valid[start:end]
                row_loss = lse - picked + z_loss * lse.square() if z_loss else lse - picked
                total += torch.where(keep, row_loss, 0.0).sum()
                if not (need_h or need_w or need_b):
                    continue
                grad = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
                if z_loss:  # d(z * lse^2)/d logits = 2 * z * lse * softmax
                    grad *= (1.0 + 2.0 * z_loss * lse)[:, None]
                grad[torch.arange(end - start, device=grad.device), safe[start:end]] -= 1.0
                grad *= (keep.float() / scale)[:, None]
                if need_b:
                    grad_b += grad.sum(dim=0)
                grad = grad.to(dtype)
                if need_h:
                    grad_h[start:end] = grad @ w
                if need_w:
                    if dtype == torch.float32:
                        grad_w.addmm_(grad.t(), h)
                    else:
                        grad_w += grad.t() @ h
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.dtypes = (weight.dtype, bias.dtype if bias is not None else None)
        return total / scale

    @staticmethod
    def backward(ctx, grad_output):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        w_dtype, b_dtype = ctx.dtypes
        if grad_h is not None:
            grad_h = grad_h * grad_output.to(grad_h.dtype)
        if grad_w is not None:
            grad_w = (grad_w * grad_output).to(w_dtype)
        if grad_b is not None:
            grad_b = (grad_b * grad_output).to(b_dtype)
        return grad_h, grad_w, grad_b, None, None, None, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                         bias: torch.Tensor | None = None, ignore_index: int = -100,
                         chunk_size: int | None = None, reduction: str = "mean", z_loss: float = 0.0) -> torch.Tensor:
    """``F.cross_entropy(hidden @ weight.T + bias, targets)`` without the full logits; hidden [N, H], weight [V, H].

    ``reduction``: ``mean`` over the targets that are not ``ignore_index`` (0 when there are none), or ``sum``.
    ``z_loss``: plus ``z_loss * logsumexp(logits)**2`` over the same rows, reduced the same way (see the module).
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be mean or sum, not {reduction!r}")
    if z_loss < 0:
        raise ValueError(f"z_loss must be >= 0, not {z_loss}")
    rows = chunk_size or chunk_rows(hidden.shape[0], hidden.shape[1], weight.shape[0])
    return _LinearCrossEntropy.apply(hidden, weight, bias, targets, ignore_index, rows, reduction,
                                     _compute_dtype(hidden), float(z_loss))


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, *, ignore_index: int = -100, reduction: str = "mean",
                  z_loss: float = 0.0) -> torch.Tensor:
    """The plain path's training loss: ``F.cross_entropy`` of logits [N, V] in fp32, plus ``z_loss *
    logsumexp**2`` over the scored rows, reduced like the cross-entropy (what ``linear_cross_entropy`` gives)."""
    logits = logits.float()
    loss = torch.nn.functional.cross_entropy(logits, targets, ignore_index=ignore_index, reduction=reduction)
    if not z_loss:
        return loss
    keep = targets != ignore_index
    z = torch.where(keep, logits.logsumexp(dim=-1).square(), 0.0).sum()
    return loss + z_loss * (z / keep.sum().clamp(min=1) if reduction == "mean" else z)


@torch.no_grad()
def linear_cross_entropy_sums(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                              bias: torch.Tensor | None = None, ignore_index: int = -100,
                              chunk_size: int | None = None) -> torch.Tensor:
    """Evaluation: [summed loss, counted targets, correct argmax predictions] (fp64), chunk by chunk."""
    dtype = _compute_dtype(hidden)
    rows = chunk_size or chunk_rows(hidden.shape[0], hidden.shape[1], weight.shape[0])
    out = torch.zeros(3, dtype=torch.float64, device=hidden.device)
    with torch.autocast(hidden.device.type, enabled=False):
        w = weight.to(dtype)
        b = bias.to(dtype) if bias is not None else None
        for start in range(0, hidden.shape[0], rows):
            h = hidden[start:start + rows].to(dtype)
            logits = (h @ w.t() if b is None else torch.addmm(b, h, w.t())).float()
            out += logit_sums(logits, targets[start:start + rows], ignore_index)
    return out


def logit_sums(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """[summed loss, counted targets, correct argmax predictions] (fp64) of logits [N, V] against targets [N]."""
    logits = logits.float()
    keep = targets != ignore_index
    loss = torch.nn.functional.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="sum")
    correct = ((logits.argmax(dim=-1) == targets) & keep).sum()
    return torch.stack([loss.double(), keep.sum().double(), correct.double()])
