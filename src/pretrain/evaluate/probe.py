"""A linear probe and a k-NN classifier on frozen features: how much of a label the features carry linearly."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from pretrain.evaluate.retrieval import unit

WEIGHT_DECAYS = (1e-3, 1e-2, 1e-1)  # the probe's L2 penalties tried (per sample, on standardized features)
KNN_K = 20
KNN_TEMPERATURE = 0.07
SMALL = 1 << 20  # features (elements) below which the probe runs on one thread


@contextlib.contextmanager
def threads_for(elements: int) -> Iterator[None]:
    """One intra-op thread for small tensors: L-BFGS makes hundreds of tiny calls, and on a busy machine every
    call's thread hand-off costs more than its arithmetic (100x measured on 2 shared cores)."""
    before = torch.get_num_threads()
    if elements < SMALL:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _fit(x: torch.Tensor, y: torch.Tensor, classes: int, weight_decay: float, max_iter: int) -> torch.nn.Linear:
    """Multinomial logistic regression, full batch, L-BFGS from zero: deterministic."""
    head = torch.nn.Linear(x.shape[1], classes, dtype=torch.float64)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-7, tolerance_change=1e-9, history_size=20)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(x), y) + weight_decay * head.weight.square().sum() / 2
        loss.backward()
        return loss

    with torch.enable_grad(), threads_for(x.numel()):
        opt.step(closure)
    return head


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor, *,
                 seed: int = 0, max_iter: int = 100) -> dict[str, Any]:
    """Validation accuracy of a logistic regression on standardized frozen features, its L2 penalty chosen on a
    seeded fifth of the train features, then refit on all of them. Labels are class indices (>= 0)."""
    train_x, val_x = train_x.double(), val_x.double()
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    train_x, val_x = (train_x - mean) / std, (val_x - mean) / std
    classes = int(max(train_y.max().item(), val_y.max().item())) + 1
    order = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(seed))
    hold, fit = order[:max(1, len(order) // 5)], order[max(1, len(order) // 5):]
    best = WEIGHT_DECAYS[-1]
    if len(fit) >= 2 and len(torch.unique(train_y[fit])) >= 2:
        scores = []
        for wd in WEIGHT_DECAYS:
            head = _fit(train_x[fit], train_y[fit], classes, wd, max_iter)
            scores.append(((head(train_x[hold]).argmax(1) == train_y[hold]).double().mean().item(), wd))
        best = max(scores, key=lambda s: (s[0], s[1]))[1]  # a tie: the stronger penalty
    head = _fit(train_x, train_y, classes, best, max_iter)
    with torch.no_grad():
        predicted = head(val_x).argmax(1)
    return {"accuracy": (predicted == val_y).double().mean().item(), "weight_decay": best,
            "predicted": predicted.tolist()}


def knn_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
                 k: int = KNN_K, temperature: float = KNN_TEMPERATURE) -> float:
    """Weighted k-NN (cosine similarity, votes exp(sim / T)) accuracy on the validation features."""
    train_x, val_x = unit(train_x), unit(val_x)
    classes = int(max(train_y.max().item(), val_y.max().item())) + 1
    k = min(k, len(train_x))
    correct = 0
    for i in range(0, len(val_x), 1024):
        sim, idx = (val_x[i:i + 1024] @ train_x.T).topk(k, dim=1)
        votes = torch.zeros(len(sim), classes, dtype=torch.float64)
        votes.scatter_add_(1, train_y[idx], (sim.double() / temperature).exp())
        correct += (votes.argmax(1) == val_y[i:i + 1024]).sum().item()
    return correct / max(len(val_x), 1)


def majority_share(labels: torch.Tensor) -> float:
    return torch.bincount(labels).max().item() / len(labels) if len(labels) else 0.0
