"""Staging a CPU-resident state for an asynchronous checkpoint without stalling the training thread.

DCP's ``DefaultStager`` copies each tensor with ``UntypedStorage.copy_``, which holds the GIL for the
whole memcpy: on a CPU run the training thread cannot dispatch a single op while it runs (about
0.1 s per GB here, the step "blocked" by a save that is meant to be asynchronous). ``Tensor.copy_``
releases the GIL, so this stager copies with it, in one background thread, into buffers it allocates
once and reuses for every later save (no page faults after the first). On CUDA the ``DefaultStager``
with pinned memory and non-blocking copies stays the right tool; this one is for CPU tensors.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch
from torch.distributed.checkpoint.staging import AsyncStager
from torch.distributed.tensor import DTensor
from torch.utils._pytree import tree_flatten, tree_unflatten


class CpuCopyStager(AsyncStager):
    """``stage(state)`` returns a future of a copy of ``state`` that later updates of the model cannot touch.

    Tensors that share storage in the state (tied weights listed under two names) share it in the copy.
    A ``DTensor`` (FSDP2) is staged as its local shard and rebuilt on the same mesh and placements.
    """

    _synchronize_after_execute = False  # the caller waits on the staging future before the weights change

    def __init__(self) -> None:
        self._executor: ThreadPoolExecutor | None = ThreadPoolExecutor(max_workers=1,
                                                                       thread_name_prefix="checkpoint-staging")
        self._buffers: dict[int, torch.Tensor] = {}  # leaf position -> reused CPU buffer

    def stage(self, state_dict: dict[str, Any]) -> Future[dict[str, Any]]:
        if self._executor is None:
            raise RuntimeError("CpuCopyStager is closed")
        leaves, spec = tree_flatten(state_dict)  # the structure is read now, the tensors copied in the thread
        return self._executor.submit(self._copy, leaves, spec)

    def _copy(self, leaves: list[Any], spec: Any) -> dict[str, Any]:
        copied: dict[int, torch.Tensor] = {}  # id of a source tensor -> its copy (aliases stay aliases)
        staged = []
        with torch.no_grad():
            for position, leaf in enumerate(leaves):
                if isinstance(leaf, DTensor):
                    local = self._copy_tensor(position, leaf.to_local(), copied)
                    staged.append(DTensor.from_local(local, leaf.device_mesh, leaf.placements, run_check=False,
                                                     shape=leaf.size(), stride=leaf.stride()))
                elif isinstance(leaf, torch.Tensor):
                    staged.append(self._copy_tensor(position, leaf, copied))
                else:
                    staged.append(leaf)  # numbers, strings, None: immutable, the rebuilt lists are new
        return tree_unflatten(staged, spec)

    def _copy_tensor(self, position: int, tensor: torch.Tensor, copied: dict[int, torch.Tensor]) -> torch.Tensor:
        if id(tensor) in copied:
            return copied[id(tensor)]
        buffer = self._buffers.get(position)
        if (buffer is None or buffer.shape != tensor.shape or buffer.dtype != tensor.dtype
                or buffer.stride() != tensor.stride()):
            buffer = torch.empty_like(tensor, device="cpu")  # keeps a dense tensor's strides
            self._buffers[position] = buffer
        buffer.copy_(tensor)  # releases the GIL, unlike UntypedStorage.copy_
        copied[id(tensor)] = buffer
        return buffer

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self._buffers.clear()
