"""Sharded, atomic, resumable checkpoints with torch.distributed.checkpoint (DCP).

Layout: ``<run root>/checkpoints/step-NNNNNNN/`` holding the DCP files (model and optimizer, each
rank writing its own shard), ``extra.json`` (step, scheduler, loader position, fingerprint),
``rng-rank<R>.pt`` and, written last by rank 0 after every rank finished, the ``_COMMITTED`` marker.
A folder without the marker is never loaded and is cleaned up by the next save.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from pretrain import storage

STEP_DIR = re.compile(r"^step-(\d{7,})$")


def step_name(step: int) -> str:
    return f"step-{step:07d}"


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


@contextlib.contextmanager
def _single_process_ok():
    """DCP warns when no process group exists; one process (export, a plain run) is intended."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assuming the intent is to (save|load) in a single process.*")
        yield


def committed_steps(root: str) -> list[int]:
    steps = []
    for name in storage.listdir(root):
        match = STEP_DIR.match(name)
        if match and storage.exists(storage.join(root, name, storage.COMMIT_MARKER)):
            steps.append(int(match.group(1)))
    return sorted(steps)


def _writer(url: str):
    if storage.is_remote(url):
        from torch.distributed.checkpoint._fsspec_filesystem import FsspecWriter

        return FsspecWriter(url, **storage.fs_options(url.split("://", 1)[0]))
    return dcp.FileSystemWriter(url)


def _stager():
    """On CUDA, DCP's stager (pinned memory, non-blocking copies); on CPU ours, whose copies release the GIL."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions

        return DefaultStager(StagingOptions(use_pinned_memory=True, use_shared_memory=False,
                                            use_async_staging=True, use_non_blocking_copy=True))
    from pretrain.train.staging import CpuCopyStager

    return CpuCopyStager()


def _reader(url: str):
    if storage.is_remote(url):
        from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader

        return FsspecReader(url, **storage.fs_options(url.split("://", 1)[0]))
    return dcp.FileSystemReader(url)


class ForeignCheckpoint(RuntimeError):
    """Committed checkpoints under the run root were made by another model, seed or token data."""


@dataclass
class CheckpointManager:
    """Saves, prunes and restores the run's checkpoints.

    ``keep`` last ones are kept plus every ``keep_every``-th step. ``asynchronous`` saves with
    ``dcp.async_save``: the state is copied to CPU memory by a background thread while the next step
    computes (``wait_staged()``, called before the optimizer changes the weights, is the only wait), written
    by another thread over its own gloo group, and committed (``extra.json`` + marker by rank 0 after every
    rank finished) at the next save or at ``finish()``; until then it is not a checkpoint.
    """

    root: str
    keep: int = 2
    fingerprint: str = ""
    keep_every: int | None = None
    asynchronous: bool = False
    _pending: tuple[Any, int, str, dict[str, Any], bytes] | None = field(default=None, init=False, repr=False)
    _staging: Any = field(default=None, init=False, repr=False)
    _stager: Any = field(default=None, init=False, repr=False)
    _group: Any = field(default=None, init=False, repr=False)
    # committed checkpoints' extra.json never changes: read each once (on S3 every read is a round trip)
    _extras: dict[int, dict[str, Any]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.asynchronous and dist.is_available() and dist.is_initialized():
            self._group = dist.new_group(backend="gloo")  # the writer thread's collectives stay off the training group

    def url(self, step: int) -> str:
        return storage.join(self.root, step_name(step))

    def steps(self, committed: list[int] | None = None) -> list[int]:
        """Committed steps made by this config: another model or data config's cannot be resumed."""
        committed = committed_steps(self.root) if committed is None else committed
        return [s for s in committed if not self.fingerprint or self.extra(s).get("fingerprint") == self.fingerprint]

    def latest(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def check_foreign(self) -> None:
        """A clear error before step 1 when the run root holds checkpoints of another model, seed or data."""
        if not self.fingerprint:
            return
        for step in committed_steps(self.root):
            theirs = self.extra(step).get("fingerprint")
            if theirs != self.fingerprint:
                raise ForeignCheckpoint(
                    f"{self.url(step)} was made by another model, seed or token data (fingerprint {theirs}, this "
                    f"run's {self.fingerprint}): it cannot be resumed and would be mixed with this run's. Use another "
                    f"run_root, or remove {self.root} to start over.")

    def save(self, step: int, model, optimizer, scheduler, extra: dict[str, Any] | None = None) -> str:
        self.finish()
        url = self.url(step)
        self._extras.pop(step, None)
        if _rank() == 0 and storage.exists(url):
            storage.remove(url)  # a half-written folder from an interrupted save
        _barrier()
        model_sd, optim_sd = get_state_dict(model, optimizer)
        state = {"model": model_sd, "optimizer": optim_sd}
        meta = {"step": step, "scheduler": scheduler.state_dict(), "fingerprint": self.fingerprint,
                "world_size": dist.get_world_size() if dist.is_initialized() else 1, **(extra or {})}
        buf = io.BytesIO()
        torch.save(rng_state(), buf)
        if self.asynchronous:
            if self._stager is None:
                self._stager = _stager()
            response = dcp.async_save(state, storage_writer=_writer(url), process_group=self._group,
                                      async_stager=self._stager)
            self._staging, future = response.staging_completion, response.upload_completion
            self._pending = (future, step, url, meta, buf.getvalue())
            return url
        with _single_process_ok():
            dcp.save(state, storage_writer=_writer(url))
        self._commit(step, url, meta, buf.getvalue())
        return url

    def finish(self) -> int | None:
        """Wait for an asynchronous save and commit it; the step it committed, if any."""
        self.wait_staged()
        if self._pending is None:
            return None
        future, step, url, meta, rng = self._pending
        self._pending = None
        future.result()
        self._commit(step, url, meta, rng)
        return step

    def wait_staged(self) -> None:
        """Block until an asynchronous save has its copy of the state: call before the weights change."""
        if self._staging is not None:
            self._staging.result()
            self._staging = None

    def close(self) -> None:
        """Commit what is pending and release the staging buffers."""
        self.finish()
        if self._stager is not None:
            self._stager.close()
            self._stager = None

    def _commit(self, step: int, url: str, meta: dict[str, Any], rng: bytes) -> None:
        storage.write_bytes(storage.join(url, f"rng-rank{_rank()}.pt"), rng)  # here, off an async save's blocking part
        _barrier()  # every rank's shard and RNG file are written
        if _rank() == 0:
            storage.write_text(storage.join(url, "extra.json"), json.dumps(meta, default=float))
            storage.write_text(storage.join(url, storage.COMMIT_MARKER), f"{step}\n")
            self._prune(step)
        _barrier()

    def _prune(self, latest: int) -> None:
        committed = committed_steps(self.root)
        mine = self.steps(committed)
        kept = set(mine[-self.keep:]) | {s for s in mine if self.keep_every and s % self.keep_every == 0}
        for step in mine:
            if step not in kept:
                storage.remove(self.url(step))
                self._extras.pop(step, None)
        for name in storage.listdir(self.root):
            match = STEP_DIR.match(name)
            if match and int(match.group(1)) not in committed and int(match.group(1)) < latest:
                storage.remove(storage.join(self.root, name))

    def extra(self, step: int) -> dict[str, Any]:
        if step not in self._extras:
            self._extras[step] = json.loads(storage.read_text(storage.join(self.url(step), "extra.json")))
        return copy.deepcopy(self._extras[step])  # callers (the scheduler's load_state_dict) may keep parts

    def restore(self, model, optimizer, scheduler, step: int | None = None) -> int:
        """Load the latest (or the given) committed checkpoint of this run; return its step (0 if none).

        Checkpoints of another model, seed or token data under the same root are an error, not ignored.
        """
        self.check_foreign()
        step = self.latest() if step is None else step
        if step is None:
            return 0
        meta = self.extra(step)
        model_sd, optim_sd = get_state_dict(model, optimizer)
        state = {"model": model_sd, "optimizer": optim_sd}
        with _single_process_ok():
            dcp.load(state, storage_reader=_reader(self.url(step)))
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
        scheduler.load_state_dict(meta["scheduler"])
        rng_url = storage.join(self.url(step), f"rng-rank{_rank()}.pt")
        if storage.exists(rng_url):
            set_rng_state(torch.load(io.BytesIO(storage.read_bytes(rng_url)), weights_only=False))
        if _rank() == 0:
            print(f"[checkpoint] resumed from {self.url(step)}", flush=True)
        return int(meta["step"])


def rng_state() -> dict[str, Any]:
    """This rank's random state: the CPU generator and, when CUDA is in use, the current device's."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def checkpoint_fingerprint(model_config: dict[str, Any], seed: int, tokens_fingerprint: str) -> str:
    """What a checkpoint must match to be resumed: the model, the seed and the token data."""
    from pretrain.config import fingerprint

    return fingerprint(model_config, seed, tokens_fingerprint)


def load_model_weights(url: str, model) -> None:
    """Load only the model weights of a DCP checkpoint into a plain single-process model (for export)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    state = {"model": get_model_state_dict(model)}
    with _single_process_ok():
        dcp.load(state, storage_reader=_reader(url))
    set_model_state_dict(model, state["model"])
