"""parallelize(): activation checkpointing, regional torch.compile, FSDP2 or DDP, applied from outside the model.

The model stays a single-device Hugging Face class; these switches (in torchtitan's order: AC per block ->
compile per block -> FSDP2 per block then the root, or DDP around everything) let the same loop run on CPU
with gloo and on GPUs with NCCL, bf16 and FSDP2. None of them changes a state-dict key: AC swaps each
block's class for a subclass that checkpoints ``forward``, ``nn.Module.compile`` compiles in place and FSDP2
shards in place, so checkpoints and the export keep the plain Hugging Face names.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import os
from collections.abc import Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn

from pretrain.config import TrainConfig

# Where each supported Hugging Face model keeps its transformer blocks: Llama and ModernBERT, BERT, ViT, and
# CLIP's two towers (every path found counts, so a two-tower model gets both lists' blocks).
BLOCK_PATHS = ("model.layers", "bert.encoder.layer", "layers", "encoder.layer", "vision_model.encoder.layers",
               "text_model.encoder.layers")  # ViT: layers (transformers 5), encoder.layer (4)
DEFAULT_COMPILE_CACHE = "~/.cache/pretrain/compile"
RECOMPILE_LIMIT = 32


def transformer_blocks(hf_model: nn.Module) -> nn.ModuleList:
    """The repeated blocks of a Hugging Face model: ``model.layers`` (Llama, ModernBERT), ``bert.encoder.layer``,
    ``layers`` (ViT), or CLIP's vision then text ``encoder.layers`` together (an unregistered list of the
    same modules: state-dict keys do not change)."""
    found = []
    for path in BLOCK_PATHS:
        with contextlib.suppress(AttributeError):
            blocks = hf_model.get_submodule(path)
            if isinstance(blocks, nn.ModuleList):
                found.append(blocks)
    if len(found) == 1:
        return found[0]
    if found:
        return nn.ModuleList([block for blocks in found for block in blocks])
    raise ValueError(f"parallelize: no transformer blocks found in {type(hf_model).__name__} "
                     f"(looked for {', '.join(BLOCK_PATHS)}); add its path to BLOCK_PATHS")


def hf_model_of(module: nn.Module) -> nn.Module:
    """The Hugging Face model: ``module`` itself, or the ``.model`` child of a TrainModule."""
    from transformers import PreTrainedModel

    return module if isinstance(module, PreTrainedModel) else module.model


# ---- activation checkpointing ------------------------------------------------------------------------------

def _save_ops() -> frozenset:
    """Ops whose outputs selective AC keeps: matmuls and attention (costly); the elementwise rest is recomputed."""
    aten = torch.ops.aten
    names = ("mm", "addmm", "bmm", "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
             "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention_for_cpu")
    return frozenset(getattr(aten, n).default for n in names if hasattr(aten, n))


def _selective_policy(ctx, func, *args, **kwargs):
    from torch.utils.checkpoint import CheckpointPolicy

    return CheckpointPolicy.MUST_SAVE if func in _SAVE_OPS else CheckpointPolicy.PREFER_RECOMPUTE


_SAVE_OPS = _save_ops()
_AC_CLASSES: dict[tuple[type, str], type] = {}


def _checkpoint_kwargs(mode: str) -> dict:
    """``selective``: the op-level policy; ``full``: no context_fn at all (Dynamo rejects an explicit no-op one)."""
    from torch.utils.checkpoint import create_selective_checkpoint_contexts

    if mode == "selective":
        return {"context_fn": functools.partial(create_selective_checkpoint_contexts, _selective_policy)}
    return {}


def _checkpointed_class(cls: type, mode: str) -> type:
    """A subclass of a block class whose forward is checkpointed; one per (class, mode), so every layer shares
    the same code and compiled graph (a per-instance wrapper would make Dynamo recompile for each layer)."""
    key = (cls, mode)
    if key not in _AC_CLASSES:
        from torch.utils.checkpoint import checkpoint

        base_forward, options = cls.forward, _checkpoint_kwargs(mode)

        def forward(self, *args, **kwargs):
            if not (self.training and torch.is_grad_enabled()):  # eval / generation: nothing to recompute
                return base_forward(self, *args, **kwargs)
            return checkpoint(base_forward, self, *args, use_reentrant=False, **options, **kwargs)

        _AC_CLASSES[key] = type(f"Checkpointed{cls.__name__}", (cls,), {"forward": forward, "ac_mode": mode})
    return _AC_CLASSES[key]


def apply_activation_checkpointing(blocks: nn.ModuleList, mode: str) -> None:
    """``full``: each block keeps only its input and recomputes the rest in backward; ``selective``: op-level,
    keeps matmul and attention outputs and recomputes the elementwise ops (norms, activations, RoPE)."""
    if mode not in ("full", "selective"):
        raise ValueError(f"train.activation_checkpointing: {mode!r} is not off, full or selective")
    for block in blocks:
        if getattr(block, "ac_mode", None) is None:
            block.__class__ = _checkpointed_class(type(block), mode)


# ---- torch.compile -----------------------------------------------------------------------------------------

def enable_compile_cache(path: str | None) -> str:
    """Inductor's FX-graph and AOTAutograd caches on, in a folder kept across restarts (a restarted or resumed
    job then skips most of the first compile). ``TORCHINDUCTOR_CACHE_DIR``, when set, wins."""
    import torch._functorch.config
    import torch._inductor.config

    if not _user_cache_dir():
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.abspath(os.path.expanduser(path or DEFAULT_COMPILE_CACHE))
    torch._inductor.config.fx_graph_cache = True
    torch._functorch.config.enable_autograd_cache = True
    return os.environ["TORCHINDUCTOR_CACHE_DIR"]


def _user_cache_dir() -> str | None:
    """``TORCHINDUCTOR_CACHE_DIR`` as the user set it. Importing transformers' models already imports inductor,
    which writes its default (``/tmp/torchinductor_$USER``, lost with the container) there, so that one is
    taken as unset."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    return None if not current or os.path.abspath(current) == os.path.abspath(default_cache_dir()) else current


def apply_compile(blocks: nn.ModuleList, backend: str = "inductor") -> None:
    """Regional compile: each block in place (keys unchanged); identical blocks share one compiled graph, so the
    first-compile cost does not grow with depth. ``PRETRAIN_COMPILE_BACKEND=aot_eager`` (or ``eager``) narrows
    down a compile problem without inductor."""
    import torch._dynamo

    # Every block shares one code object, so all variants (train / eval, document masks, ModernBERT's two
    # attention kinds, other batch shapes: dynamic=False) count against one recompile limit (default 8).
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    for block in blocks:
        block.compile(backend=os.environ.get("PRETRAIN_COMPILE_BACKEND", backend), dynamic=False)


# ---- FSDP2 / DDP -------------------------------------------------------------------------------------------

def mixed_precision(precision: str, device: torch.device):
    """bf16 compute with fp32 gradient reduction on CUDA. On CPU the parameters stay fp32 and autocast provides
    the bf16 matmuls, as under DDP: a bf16 policy works over gloo too, but measured no faster on one host."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if precision == "bf16" and device.type == "cuda":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def apply_fsdp(module: nn.Module, precision: str, device: torch.device) -> None:
    """FSDP2 per block, then the root (the TrainModule: embeddings, final norm, head), whose forward gathers those
    for the whole step, so a loss that calls the trunk and the head's weight directly (the chunked loss) works.
    Blocks free their gathered parameters after forward except the last, which backward needs at once; the root
    keeps its own too (as torchtitan)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    mp = mixed_precision(precision, device)
    blocks = transformer_blocks(hf_model_of(module))
    for i, block in enumerate(blocks):
        fully_shard(block, mesh=mesh, mp_policy=mp, reshard_after_forward=i < len(blocks) - 1)
    fully_shard(module, mesh=mesh, mp_policy=mp, reshard_after_forward=False)
    module.register_forward_hook(_reshard_after_no_grad_forward)


@contextlib.contextmanager
def gathered_root(module: nn.Module) -> Iterator[None]:
    """Lets the HF model run alone (``unwrap(module).model.generate(...)``) under FSDP2: its embeddings, final
    norm and head belong to the root unit, which only the TrainModule's forward gathers; blocks gather their own.
    No-op under DDP or on one device."""
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(module, FSDPModule):
        yield
        return
    module._get_fsdp_state()._lazy_init()  # this module becomes the root, as its first forward would make it
    module.unshard()
    try:
        yield
    finally:
        module.reset_iter_state()


def _reshard_after_no_grad_forward(root: nn.Module, args, output):
    """After a forward without grad (eval, ``generate``), free what stayed gathered: the units that keep their
    parameters for backward would otherwise carry them, and FSDP2's backward-prefetch order, into the next
    training step, which then trains on stale parameters (measured: losses off by 5e-2 after one step)."""
    if not torch.is_grad_enabled():
        root.reset_iter_state()
    return output


# ---- meta-device initialization ----------------------------------------------------------------------------

def reset_buffers(hf_model: nn.Module) -> None:
    """Recompute the non-persistent buffers (RoPE ``inv_freq``, BERT ``position_ids``) that ``to_empty`` leaves as
    garbage, with the model's own ``_init_weights`` on modules that hold such buffers and no parameters."""
    init_fn = getattr(hf_model, "_init_weights", None)
    if init_fn is None:
        return
    for module in hf_model.modules():
        if module._non_persistent_buffers_set and not any(True for _ in module.parameters(recurse=False)):
            init_fn(module)


def materialize(module: nn.Module, device: torch.device, init: Callable[[nn.Module], None]) -> None:
    """A meta-device model gets storage on ``device`` and is initialized there, before sharding.

    Initializing the full tensors (then sharding them) gives exactly the weights of a model built on the device
    with the same seed, for any world size: a random init run on DTensor shards would draw other numbers (on
    CPU every rank even draws the same numbers for its shard). The cost is one full fp32 copy per device while
    initializing, before any optimizer state exists. Tied embeddings are re-tied after ``init`` (in the order of
    ``build.init_weights``: tying before would let the head's draws overwrite the embedding's).
    """
    module.to_empty(device=device)
    hf = hf_model_of(module)
    reset_buffers(hf)
    init(hf)
    if hasattr(hf, "tie_weights"):  # to_empty gives tied parameters separate storage
        hf.tie_weights()


def _on_meta(module: nn.Module) -> bool:
    return any(t.is_meta for t in itertools.chain(module.parameters(), module.buffers()))


# ---- the entry point ---------------------------------------------------------------------------------------

def set_tf32(device: torch.device, enabled: bool) -> None:
    """TF32 matmuls for what still runs in fp32 on CUDA. ``set_float32_matmul_precision`` is the API that keeps the
    legacy ``allow_tf32`` and the new ``fp32_precision`` flags consistent (mixing those two raises in torch 2.13)."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high" if enabled else "highest")


def parallelize(module: nn.Module, cfg: TrainConfig, device: torch.device, *,
                init: Callable[[nn.Module], None] | None = None) -> nn.Module:
    """Apply AC, regional compile and FSDP2 (``train.parallel=fsdp`` in a process group, even of one) or DDP
    (``ddp`` with more than one process) to a TrainModule (or a bare HF model); returns the module to train.

    A module on the meta device is materialized on ``device`` and initialized by ``init(hf_model)`` first.
    """
    set_tf32(device, cfg.tf32)
    if _on_meta(module):
        if init is None:
            raise ValueError("parallelize: the model is on the meta device; pass init= to initialize it")
        materialize(module, device, init)
    else:
        module.to(device)
    blocks = transformer_blocks(hf_model_of(module))
    if cfg.activation_checkpointing != "off":
        apply_activation_checkpointing(blocks, cfg.activation_checkpointing)
    if cfg.compile:
        enable_compile_cache(cfg.compile_cache)
        apply_compile(blocks)
    in_group = dist.is_available() and dist.is_initialized()
    if in_group and cfg.parallel == "fsdp":
        apply_fsdp(module, cfg.precision, device)
    elif in_group and cfg.parallel == "ddp" and dist.get_world_size() > 1:
        from torch.nn.parallel import DistributedDataParallel

        module = DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
    return module


def unwrap(module: nn.Module) -> nn.Module:
    """The module under DDP / torch.compile wrappers (FSDP2, AC and regional compile change nothing here)."""
    while True:
        if isinstance(module, nn.parallel.DistributedDataParallel):
            module = module.module
        elif hasattr(module, "_orig_mod"):
            module = module._orig_mod
        else:
            return module


@contextlib.contextmanager
def gradient_sync(module: nn.Module, enabled: bool) -> Iterator[None]:
    """Around a micro-batch's forward: ``enabled=False`` skips the gradient all-reduce (DDP) or reduce-scatter
    (FSDP2) of its backward and accumulates locally; the last micro-batch (``True``) reduces the sum once.

    The backward may run inside or right after the ``with``: DDP decides in forward, and FSDP2's setting holds
    until the next call (it is read in backward).
    """
    from torch.distributed.fsdp import FSDPModule

    if isinstance(module, nn.parallel.DistributedDataParallel):
        with contextlib.nullcontext() if enabled else module.no_sync():
            yield
        return
    for unit in module.modules():
        if isinstance(unit, FSDPModule):
            unit.set_requires_gradient_sync(enabled, recurse=False)
    yield


def clip_grad_norm(module: nn.Module, max_norm: float | None) -> torch.Tensor:
    """The global L2 norm of all gradients before clipping (the same on every rank; FSDP2's sharded DTensor
    gradients are reduced across ranks), clipping to ``max_norm`` when it is set, positive and finite."""
    from torch.distributed.tensor import DTensor

    params = [p for p in module.parameters() if p.grad is not None]
    total = torch.nn.utils.get_total_norm([p.grad for p in params])
    if isinstance(total, DTensor):
        total = total.full_tensor()
    if max_norm and 0 < max_norm < math.inf:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total
