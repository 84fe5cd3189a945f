"""Zero-shot retrieval of an image-text model: pools of held-out samples with distinct captions, recall@k both ways.

In each pool every image ranks the pool's captions (image->text) and every caption the pool's images (text->image)
by cosine similarity; recall@k is the share whose own partner is in the top k, averaged over the pools; chance is
k / pool. A tie counts against the query, so a model that scores everything alike gets 0, never a lucky tie-break.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import torch

from pretrain.config import RecipeError

MAX_POOLS = 50  # retrieval pools, at most (5,000 samples at the default pool of 100)


def unit(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to length 1 (cosine similarity as a dot product)."""
    return torch.nn.functional.normalize(x.float(), dim=-1)


def caption_key(text: str) -> str:
    return " ".join((text or "").lower().split())


def retrieval_pools(texts: Sequence[str], pool: int, seed: int, max_pools: int = MAX_POOLS) -> list[list[int]]:
    """Disjoint pools of ``pool`` sample positions whose captions are all distinct, in a seeded order."""
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    seen: set[str] = set()
    distinct = []
    for i in order:
        key = caption_key(texts[i])
        if key and key not in seen:
            seen.add(key)
            distinct.append(i)
    n = min(len(distinct) // pool, max_pools)
    if n == 0:
        raise RecipeError(f"retrieval: the validation split holds {len(distinct)} samples with distinct captions "
                          f"(of {len(texts)}), fewer than evaluate.retrieval_pool ({pool}): raise "
                          "split.val_fraction (or add data), or lower evaluate.retrieval_pool")
    return [distinct[p * pool:(p + 1) * pool] for p in range(n)]


def recall_at(sim: torch.Tensor, k: int) -> float:
    """Share of queries (rows) whose partner (the diagonal) has fewer than ``k`` other candidates scoring at least
    as high: ties count against the query; a NaN score is a miss."""
    sim = torch.nan_to_num(sim.float(), nan=-math.inf)
    correct = sim.diagonal().unsqueeze(1)
    at_least = (sim >= correct).sum(dim=1) - 1  # other candidates as good or better
    return (at_least < k).float().mean().item()


def retrieval(img: torch.Tensor, txt: torch.Tensor, pools: Sequence[Sequence[int]], ks: Sequence[int] = (1, 5)
              ) -> tuple[dict[str, float], dict[int, int], dict[int, bool]]:
    """Recall@k both ways averaged over the pools; per sample, the caption it ranks first in its pool (a
    position) and whether that is its own caption, strictly ahead of every other."""
    img, txt = unit(img), unit(txt)
    sums = {f"{d}_recall_at_{k}": 0.0 for d in ("i2t", "t2i") for k in ks}
    top: dict[int, int] = {}
    hit: dict[int, bool] = {}
    for p in pools:
        idx = torch.tensor(list(p))
        sim = img[idx] @ txt[idx].T
        for k in ks:
            sums[f"i2t_recall_at_{k}"] += recall_at(sim, k)
            sums[f"t2i_recall_at_{k}"] += recall_at(sim.T, k)
        first = torch.nan_to_num(sim, nan=-math.inf)
        strict = (first >= first.diagonal().unsqueeze(1)).sum(dim=1) == 1
        for row, (j, ok) in enumerate(zip(first.argmax(dim=1).tolist(), strict.tolist(), strict=True)):
            top[p[row]], hit[p[row]] = p[j], ok
    return {key: v / len(pools) for key, v in sums.items()}, top, hit
