"""The optimizer: AdamW with weight-decay groups, or Muon for the blocks' matrices plus AdamW for the rest.

Groups are found from module types, not names, so the same code serves Llama and (Modern)BERT, and a model
whose blocks are wrapped (activation checkpointing, regional compile) or sharded (FSDP2 DTensors):

- ``decay``: weights with 2 or more dimensions that are not embedding tables (a head tied to the input
  embedding is the same Parameter, so it counts as an embedding; an untied head is decayed);
- ``no_decay``: norms, biases (anything 1-D), embedding tables and learned tokens/positions (``LEARNED_TOKENS``);
- ``muon`` (``train.optimizer: muon``): the 2-D weights inside the transformer blocks (attention and MLP
  projections); embeddings, the head, norms and biases stay with AdamW;
- ``embedding`` and ``head``, only when ``train.decay_embeddings``, ``train.embedding_lr`` or ``train.head_lr``
  asks for them: the embedding tables (a tied head included) at ``embedding_lr``, decayed when
  ``decay_embeddings``; an untied output head at ``head_lr``, decayed as before. Otherwise they stay in
  ``no_decay`` / ``decay``, so a recipe without these keys keeps the groups (and checkpoints) it had.

Every group carries a ``kind`` key (one of the above) and its own ``lr``, so one ``LambdaLR`` scales all of
them, each from its own base LR.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.optim._muon import _adjust_lr, _zeropower_via_newtonschulz
from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

from pretrain.config import TrainConfig

# CPU, torch 2.13, one AdamW step over a 24.6M-parameter Llama shape (hidden 512, 6 layers, vocab 8192), median
# of 15 steps: fused 15.4 ms, foreach 90 ms, for-loop 50 ms with 1 thread; fused 13 ms, foreach 62 ms, for-loop
# 34 ms with 2 threads. On CUDA fused is torch's fastest AdamW too (not measured here): used wherever it exists.
_FUSED_DEVICES = frozenset(_get_fused_kernels_supported_devices())


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (``train.optimizer: adamw``) or Muon + AdamW in one :class:`OptimizerList` (``muon``)."""
    apart = cfg.decay_embeddings or cfg.embedding_lr is not None or cfg.head_lr is not None
    groups = split_parameters(model, muon=cfg.optimizer == "muon", apart=apart)
    if cfg.head_lr is not None and not groups["head"]:
        raise ValueError("train.head_lr: the model has no separate output head (it is tied to the input embedding, "
                         "model.tie_embeddings): it trains at train.embedding_lr")
    adamw = _adamw([
        {"params": groups["decay"], "weight_decay": cfg.weight_decay, "kind": "decay"},
        {"params": groups["no_decay"], "weight_decay": 0.0, "kind": "no_decay"},
        {"params": groups["embedding"], "weight_decay": cfg.weight_decay if cfg.decay_embeddings else 0.0,
         "lr": cfg.embedding_lr or cfg.lr, "kind": "embedding"},
        {"params": groups["head"], "weight_decay": cfg.weight_decay, "lr": cfg.head_lr or cfg.lr, "kind": "head"},
    ], cfg)
    if cfg.optimizer == "adamw":
        return adamw
    if not groups["muon"]:
        raise ValueError("train.optimizer=muon found no 2-D weights inside the transformer blocks")
    muon = ShardedMuon([{"params": groups["muon"], "kind": "muon"}], lr=cfg.muon_lr, momentum=cfg.muon_momentum,
                       weight_decay=cfg.weight_decay, adjust_lr_fn="match_rms_adamw")
    return OptimizerList([adamw, muon])


# Parameters that are embeddings without being nn.Embedding tables: a ViT's learned [CLS]/mask tokens and its
# position embeddings (3-D, added to the patches); like embedding tables they are not decayed.
LEARNED_TOKENS = frozenset({"cls_token", "mask_token", "distillation_token", "position_embeddings"})


def split_parameters(model: nn.Module, muon: bool = False, apart: bool = False) -> dict[str, list[nn.Parameter]]:
    """The trainable parameters by group kind (``decay``, ``no_decay``, ``muon``, ``embedding``, ``head``), each
    once, in model order; ``embedding`` and ``head`` stay empty unless ``apart`` (see the module docstring)."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    blocks = {id(p) for p in _blocks(model).parameters()} if muon else set()
    head = _output_head(model) if apart else None
    groups: dict[str, list[nn.Parameter]] = {"decay": [], "no_decay": [], "muon": [], "embedding": [], "head": []}
    for name, p in model.named_parameters():  # deduplicated: a tied head is the embedding's own Parameter
        if not p.requires_grad:
            continue
        if apart and id(p) in embeddings:
            groups["embedding"].append(p)
        elif head is not None and p is head:
            groups["head"].append(p)
        elif p.ndim < 2 or id(p) in embeddings or name.rsplit(".", 1)[-1] in LEARNED_TOKENS:
            groups["no_decay"].append(p)
        elif id(p) in blocks and p.ndim == 2:
            groups["muon"].append(p)
        else:
            groups["decay"].append(p)
    return groups


def _output_head(model: nn.Module) -> nn.Parameter | None:
    """The output head's weight (HF ``get_output_embeddings``), or None for a model without one."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    return getattr(head, "weight", None)


def parameter_groups_summary(optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Parameter counts (elements) per group kind, for the log: {"decay": ..., "no_decay": ..., "muon": ...}."""
    counts: Counter[str] = Counter()
    for group in optimizer.param_groups:
        counts[group.get("kind", "default")] += sum(p.numel() for p in group["params"])
    return dict(counts)


def _blocks(model: nn.Module) -> nn.Module:
    """The transformer blocks: the ModuleList holding the most parameters (``model.layers``, ``encoder.layer``)."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m)]
    if not lists:
        raise ValueError(f"train.optimizer=muon: no transformer blocks (nn.ModuleList) in {type(model).__name__}")
    return max(lists, key=lambda m: sum(p.numel() for p in m.parameters()))


def _adamw(groups: list[dict[str, Any]], cfg: TrainConfig) -> torch.optim.AdamW:
    groups = [g for g in groups if g["params"]]  # DCP's state-dict helpers reject more than one empty group
    devices = {p.device.type for g in groups for p in g["params"]}
    fused = devices <= _FUSED_DEVICES and "meta" not in devices
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay,
                             fused=fused, foreach=not fused)


class ShardedMuon(torch.optim.Muon):
    """``torch.optim.Muon``, also for FSDP2-sharded (DTensor) matrices. Newton-Schulz needs the whole matrix, so
    for a DTensor each rank gathers the full momentum-blended update, orthogonalizes it and keeps its own shard:
    the same maths as on one device, at the cost of one all-gather per matrix and the Newton-Schulz work repeated
    on every rank (fine for the sizes here; spreading the matrices over the ranks is the next step if it shows).
    Plain tensors take torch's own code path; the state (``momentum_buffer``) is torch's either way."""

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        if not any(isinstance(p, DTensor) for g in self.param_groups for p in g["params"]):
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum, decay = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - momentum)
                update = p.grad.lerp(buf, momentum) if group["nesterov"] else buf
                update = _orthogonalize(update, group)
                p.mul_(1 - lr * decay)
                p.add_(update, alpha=-_adjust_lr(lr, group["adjust_lr_fn"], p.shape))
        return loss


def _orthogonalize(update: torch.Tensor, group: dict[str, Any]) -> torch.Tensor:
    # Newton-Schulz starts by casting to bf16: gathering bf16 halves the traffic and gives the same bits.
    full = update.bfloat16().full_tensor() if isinstance(update, DTensor) else update
    ortho = _zeropower_via_newtonschulz(full, group["ns_coefficients"], group["ns_steps"], group["eps"])
    if isinstance(update, DTensor):  # every rank holds the whole result: each keeps its shard, no communication
        return distribute_tensor(ortho, update.device_mesh, update.placements, src_data_rank=None)
    return ortho


class OptimizerList(torch.optim.Optimizer):
    """Several optimizers acting as one (as torchtitan's OptimizersContainer): ``param_groups`` and ``state`` are
    live views of the children's (so one LR scheduler scales every group, and DCP's ``get_state_dict`` maps each
    parameter to its name), ``step`` and ``zero_grad`` call each child, and the state dict is one standard
    optimizer state dict over the concatenated groups, split back by position on load."""

    def __init__(self, optimizers: Iterable[torch.optim.Optimizer]) -> None:
        # Optimizer.__init__ would build groups of its own; only its hook registries are needed.
        self.optimizers = list(optimizers)
        self.defaults: dict[str, Any] = {}
        for hooks in ("step_pre", "step_post", "state_dict_pre", "state_dict_post", "load_state_dict_pre",
                      "load_state_dict_post"):
            setattr(self, f"_optimizer_{hooks}_hooks", OrderedDict())

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return [g for opt in self.optimizers for g in opt.param_groups]

    @property
    def state(self) -> dict[torch.Tensor, Any]:  # type: ignore[override]
        return {p: s for opt in self.optimizers for p, s in opt.state.items()}

    def __getstate__(self) -> dict[str, Any]:
        return {"optimizers": self.optimizers}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["optimizers"])

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        raise NotImplementedError("add groups to one of OptimizerList.optimizers")

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self.optimizers:
            opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        state: dict[int, Any] = {}
        groups: list[dict[str, Any]] = []
        offset = 0
        for opt in self.optimizers:
            sd = opt.state_dict()  # parameter ids count from 0 in each child: shift them past the previous ones
            state.update({offset + i: s for i, s in sd["state"].items()})
            groups += [{**g, "params": [offset + i for i in g["params"]]} for g in sd["param_groups"]]
            offset += sum(len(g["params"]) for g in opt.param_groups)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Each child gets the next ``len(child.param_groups)`` groups and the state of their parameters; the
        keys may be ids or parameter names (DCP's ``set_state_dict`` passes names), matched by position."""
        saved = list(state_dict["param_groups"])
        if len(saved) != len(self.param_groups):
            raise ValueError(f"optimizer state has {len(saved)} parameter groups, this optimizer "
                             f"{len(self.param_groups)} (was the checkpoint written with another train.optimizer?)")
        for opt in self.optimizers:
            mine, saved = saved[:len(opt.param_groups)], saved[len(opt.param_groups):]
            keys = [k for g in mine for k in g["params"]]
            opt.load_state_dict({"state": {k: state_dict["state"][k] for k in keys if k in state_dict["state"]},
                                 "param_groups": mine})
