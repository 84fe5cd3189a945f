"""Task accuracy: the local cloze tasks (``pretrain.evaluate.tasks``) and any lm-eval harness task.

A causal LM goes through the EleutherAI harness (``lm_eval.simple_evaluate`` with ``HFLM`` on the exported
folder): the local tasks are handed to it as a task folder, anything else is passed by name (a hub task needs
hub access: ``offline=False``). Offline by default: the Hugging Face hub and datasets libraries are switched
to offline mode for the call, so nothing is downloaded.

A masked LM cannot be scored by the harness's log-likelihood, so the same items are scored here by
pseudo-log-likelihood (Salazar et al., 2020): each continuation token masked in turn, the log-probability of
the true token summed; the choice with the highest sum is the model's answer (as lm-eval's ``acc``).
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pretrain import storage
from pretrain.evaluate.tasks import Item, TaskFileError, chance, load_index, load_items, task_yaml

OBJECTIVES = ("causal_lm", "masked_lm")
OFFLINE_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


class ModelError(ValueError):
    """A model folder that cannot be evaluated; the message names the folder."""


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """Hub and datasets in offline mode for the block: the environment and the flags those libraries read at
    import (so it holds even when they were imported before), restored afterwards."""
    saved_env = {k: os.environ.get(k) for k in OFFLINE_ENV}
    os.environ.update(dict.fromkeys(OFFLINE_ENV, "1"))
    flags: list[tuple[Any, str, Any]] = []
    try:
        import huggingface_hub.constants as hub_constants

        flags.append((hub_constants, "HF_HUB_OFFLINE", hub_constants.HF_HUB_OFFLINE))
        import datasets.config as datasets_config

        flags += [(datasets_config, k, getattr(datasets_config, k)) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
                  if hasattr(datasets_config, k)]
    except ImportError:
        pass
    for module, name, _ in flags:
        setattr(module, name, True)
    try:
        yield
    finally:
        for module, name, value in flags:
            setattr(module, name, value)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def model_objective(model_dir: str) -> str:
    """``causal_lm`` or ``masked_lm`` from the folder's config (its architectures, else its model type)."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    local = storage.local_copy(model_dir)
    if not (Path(local) / "config.json").is_file():
        raise ModelError(f"{model_dir}: not a Hugging Face model folder (no config.json)")
    config = AutoConfig.from_pretrained(local)
    for arch in config.architectures or []:
        if arch.endswith("ForCausalLM"):
            return "causal_lm"
        if arch.endswith("ForMaskedLM"):
            return "masked_lm"
    if config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "causal_lm"
    if config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "masked_lm"
    raise ModelError(f"{model_dir}: a {config.model_type} model ({', '.join(config.architectures or [])}) is "
                     f"neither a causal nor a masked language model")


def _lm_eval() -> Any:
    try:
        import lm_eval
    except ImportError as err:
        raise ModuleNotFoundError("task accuracy of a causal LM runs the EleutherAI harness: pip install "
                                  "'lm-eval==0.4.13'") from err
    return lm_eval


def _split_tasks(task_dir: str | None, tasks: Sequence[str]) -> tuple[dict[str, Any], list[str], list[str]]:
    """(the task index, the local task names, the harness task names) of the requested tasks."""
    index = load_index(task_dir) if task_dir else {"tasks": {}}
    local = [t for t in tasks if t in index["tasks"]]
    return index, local, [t for t in tasks if t not in index["tasks"]]


def _local_items(task_dir: str, index: Mapping[str, Any], name: str) -> tuple[str, list[Item]]:
    """A local task's JSONL on local disk (copied from a remote task folder) and its checked items."""
    path = storage.local_copy(storage.join(task_dir, index["tasks"][name]["file"]))
    return path, load_items(path)


# -- causal LM: the harness -----------------------------------------------------------------------------------
def evaluate_harness(lm: Any, task_dir: str | None, tasks: Sequence[str], limit: int | None = None,
                     seed: int = 0, use_offline: bool = True) -> dict[str, dict[str, Any]]:
    """Run ``tasks`` through ``lm_eval.simple_evaluate`` with the lm-eval model ``lm``; report["tasks"] form.

    Local tasks are checked item by item first (a malformed item names its file and line) and registered from a
    fresh folder whose YAML points at the local copy of their JSONL (``datasets`` caches it there too, so
    nothing is left in the home folder and an edited file is never read from a stale cache)."""
    lm_eval = _lm_eval()
    from lm_eval.tasks import TaskManager

    index, local, hub = _split_tasks(task_dir, tasks)
    with tempfile.TemporaryDirectory(prefix="pretrain-tasks-") as tmp:
        for name in local:
            path, _ = _local_items(task_dir or "", index, name)
            (Path(tmp) / f"{name}.yaml").write_text(task_yaml(name, str(Path(path).resolve()),
                                                              cache_dir=str(Path(tmp) / "datasets")))
        with offline() if use_offline else contextlib.nullcontext():
            manager = TaskManager(include_path=tmp if local else None, include_defaults=bool(hub))
            try:
                out = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager, limit=limit,
                                              bootstrap_iters=0, log_samples=True, random_seed=seed,
                                              numpy_random_seed=seed, torch_random_seed=seed,
                                              fewshot_random_seed=seed)
            except AssertionError as e:  # lm-eval asserts, e.g. that an answer fits the model's context
                raise ModelError(f"lm-eval refused {', '.join(tasks)} from {task_dir or 'the harness'}: "
                                 f"{e or 'an assertion failed'} (an answer choice longer than the model's "
                                 f"context, max_length {getattr(lm, 'max_length', '?')} tokens?)") from e
    if out is None:  # not rank 0 of a distributed harness run
        return {}
    return {name: _harness_result(name, out, index["tasks"].get(name)) for name in tasks}


def _harness_result(name: str, out: Mapping[str, Any], local: Mapping[str, Any] | None) -> dict[str, Any]:
    metrics = out["results"].get(name)
    if metrics is None:
        raise KeyError(f"lm-eval returned no results for task {name!r} (a group? name its subtasks)")
    metric = "acc" if "acc,none" in metrics else next(
        (k.split(",")[0] for k, v in metrics.items() if "," in k and "stderr" not in k
         and isinstance(v, (int, float))), "acc")
    samples = out.get("samples", {}).get(name, [])
    n_choices = [len(s["arguments"]) for s in samples if s.get("arguments")]
    by_source: dict[str, list[float]] = defaultdict(list)
    for s in samples:
        if isinstance(s.get("doc"), dict) and "source" in s["doc"] and metric in s:
            by_source[str(s["doc"]["source"])].append(float(s[metric]))
    result = {"accuracy": float(metrics.get(f"{metric},none", math.nan)),
              "chance": sum(1.0 / n for n in n_choices) / len(n_choices) if n_choices else None,
              "items": len(samples) or int(out.get("n-samples", {}).get(name, {}).get("effective", 0)),
              "metric": metric, "decontamination": dict(local["decontamination"]) if local else None,
              "harness": "lm-eval"}
    if by_source:
        result["by_source"] = {k: {"accuracy": sum(v) / len(v), "items": len(v)} for k, v in sorted(by_source.items())}
    return result


# -- masked LM: pseudo-log-likelihood -------------------------------------------------------------------------
def continuation_ids(tokenizer: Any, context: str, continuation: str, max_length: int) -> tuple[list[int], list[int]]:
    """The ids of context + continuation encoded as one string (special tokens as the tokenizer adds them) and
    the positions of the continuation's tokens (those ending after the context); the context is cut from the
    left to fit ``max_length``."""
    enc = tokenizer(context + continuation, return_offsets_mapping=True, return_special_tokens_mask=True,
                    add_special_tokens=True)
    ids, offsets, special = enc["input_ids"], enc["offset_mapping"], enc["special_tokens_mask"]
    positions = [i for i, ((_, end), sp) in enumerate(zip(offsets, special, strict=True))
                 if not sp and end > len(context)]
    if not positions:
        raise ValueError(f"continuation {continuation!r} has no tokens")
    excess = len(ids) - max_length
    if excess > 0:  # drop context tokens right after any leading special tokens
        start = next((i for i, sp in enumerate(special) if not sp), 0)
        if positions[0] - start < excess:
            raise ValueError(f"continuation {continuation!r} does not fit in {max_length} tokens")
        ids = ids[:start] + ids[start + excess:]
        positions = [p - excess for p in positions]
    return ids, positions


def pll_scores(model: Any, tokenizer: Any, context: str, choices: Sequence[str], batch_size: int = 32,
               max_length: int | None = None) -> list[float]:
    """Pseudo-log-likelihood of each choice after ``context``: the sum over its tokens of log p(token) with that
    one token masked (the rest of the text visible)."""
    import torch

    mask_id = tokenizer.mask_token_id
    if mask_id is None:
        raise ModelError("the tokenizer has no mask token: a masked LM's tokenizer names one")
    limit = max_length or int(getattr(model.config, "max_position_embeddings", 512))
    rows: list[tuple[int, list[int], int, int]] = []  # (choice, masked ids, masked position, true id)
    for c, choice in enumerate(choices):
        ids, positions = continuation_ids(tokenizer, context, choice, limit)
        for p in positions:
            masked = list(ids)
            masked[p] = mask_id
            rows.append((c, masked, p, ids[p]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    scores = [0.0] * len(choices)
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            width = max(len(r[1]) for r in chunk)
            x = torch.full((len(chunk), width), pad, dtype=torch.long)
            attn = torch.zeros((len(chunk), width), dtype=torch.long)
            for j, (_, masked, _, _) in enumerate(chunk):
                x[j, :len(masked)] = torch.tensor(masked)
                attn[j, :len(masked)] = 1
            logits = model(input_ids=x.to(model.device), attention_mask=attn.to(model.device)).logits.float().cpu()
            rowsel = torch.arange(len(chunk))
            pos = torch.tensor([r[2] for r in chunk])
            target = torch.tensor([r[3] for r in chunk])
            logp = torch.log_softmax(logits[rowsel, pos], dim=-1)[rowsel, target]
            for (c, *_), value in zip(chunk, logp.tolist(), strict=True):
                scores[c] += value
    return scores


def pll_accuracy(model: Any, tokenizer: Any, items: Sequence[Item], batch_size: int = 32,
                 ) -> tuple[float, list[int]]:
    """Accuracy of the argmax-PLL choice over ``items``, and the chosen index of each item (ties: the first)."""
    picks = []
    for item in items:
        scores = pll_scores(model, tokenizer, item.context, item.choices, batch_size)
        picks.append(max(range(len(scores)), key=scores.__getitem__))
    correct = sum(p == i.answer for p, i in zip(picks, items, strict=True))
    return (correct / len(items) if items else math.nan), picks


def _masked_result(model: Any, tokenizer: Any, items: Sequence[Item], local: Mapping[str, Any],
                   batch_size: int) -> dict[str, Any]:
    accuracy, picks = pll_accuracy(model, tokenizer, items, batch_size)
    by_source: dict[str, list[bool]] = defaultdict(list)
    for pick, item in zip(picks, items, strict=True):
        by_source[item.source].append(pick == item.answer)
    return {"accuracy": accuracy, "chance": chance(items), "items": len(items), "metric": "acc",
            "decontamination": dict(local["decontamination"]), "harness": "pll",
            "by_source": {k: {"accuracy": sum(v) / len(v), "items": len(v)} for k, v in sorted(by_source.items())}}


# -- either -----------------------------------------------------------------------------------------------------
def run_tasks(model_dir: str, task_dir: str | None, tasks: Sequence[str], objective: str | None = None,
              batch_size: int = 8, limit: int | None = None, device: str = "cpu", seed: int = 0,
              use_offline: bool = True) -> dict[str, dict[str, Any]]:
    """Accuracy of the model folder ``model_dir`` on ``tasks`` (names of the task set in ``task_dir``, or any
    lm-eval task for a causal LM): {task: {"accuracy", "chance", "items", "metric", "decontamination", ...}}.

    ``objective``: ``causal_lm`` or ``masked_lm``; None reads it from the folder. ``limit``: the first items
    of each task only."""
    found = model_objective(model_dir)
    if objective is not None and objective != found:
        raise ModelError(f"{model_dir}: a {found.replace('_', ' ')} folder, but {objective} was asked for")
    if not tasks:
        return {}
    local_dir = storage.local_copy(model_dir)
    if found == "causal_lm":
        _lm_eval()
        from lm_eval.models.huggingface import HFLM

        with offline() if use_offline else contextlib.nullcontext():
            lm = HFLM(pretrained=local_dir, backend="causal", device=device, batch_size=batch_size,
                      dtype="float32", trust_remote_code=False)
        return evaluate_harness(lm, task_dir, tasks, limit, seed, use_offline)
    import torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    index, local, hub = _split_tasks(task_dir, tasks)
    if hub:
        raise ModelError(f"{model_dir}: a masked LM is scored on the local task set only; {', '.join(hub)} "
                         f"{'is' if len(hub) == 1 else 'are'} not in {task_dir or 'any task folder'}")
    with offline() if use_offline else contextlib.nullcontext():
        model = AutoModelForMaskedLM.from_pretrained(local_dir, dtype=torch.float32).to(device).eval()
        tokenizer = AutoTokenizer.from_pretrained(local_dir)
    results = {}
    for name in local:
        _, items = _local_items(task_dir or "", index, name)
        results[name] = _masked_result(model, tokenizer, items[:limit] if limit else items, index["tasks"][name],
                                       batch_size)
    return results


__all__ = ["ModelError", "TaskFileError", "continuation_ids", "evaluate_harness", "model_objective", "offline",
           "pll_accuracy", "pll_scores", "run_tasks"]
