"""``pretrain compare RUN_ROOT...``: several runs side by side, a table and overlaid curves.

Everything is read from what the runs wrote under their roots (local or s3://): the training metrics
(``train/metrics.jsonl``, else the history in the train manifest, so a run still training can be compared), the
train, model and evaluate manifests, ``evaluate/report.json`` and the resolved recipe. Curves are drawn against
tokens trained (step x tokens per optimizer step), the one axis on which runs with other batch sizes or world sizes
line up. A run root without training metrics is an error naming it: a comparison with a silent hole is worse than
none.
"""

from __future__ import annotations

import contextlib
import html
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pretrain import storage
from pretrain.manifest import Manifest

METRICS_FILE = ("train", "metrics.jsonl")
RECIPE_FILES = ("recipe.yaml", "recipe.json")


class CompareError(ValueError):
    """A run root that cannot be compared; the message names it."""


def _read(url: str) -> str | None:
    try:
        return storage.read_text(url)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


def _manifest(root: str, step: str) -> Manifest | None:
    try:
        return Manifest.load(storage.join(root, step))
    except FileNotFoundError:
        return None


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def load_history(root: str, train: Manifest | None = None) -> list[dict[str, Any]]:
    """The run's training metrics rows (``train/metrics.jsonl``; a torn or foreign line is skipped), else the
    history the train manifest keeps; a ``CompareError`` naming the root when there are none."""
    text = _read(storage.join(root, *METRICS_FILE))
    rows: list[dict[str, Any]] = []
    for line in (text or "").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            row = json.loads(line)
            if isinstance(row, dict) and _num(row.get("step")) is not None:
                rows.append(row)
    if not rows and train is not None:
        rows = [r for r in train.extra.get("history") or [] if isinstance(r, dict) and _num(r.get("step")) is not None]
    if not rows:
        where = storage.join(root, *METRICS_FILE)
        if not storage.exists(root):
            raise CompareError(f"{root}: no such run root")
        raise CompareError(f"{root}: no training metrics ({where} is {'empty' if text is not None else 'missing'} "
                           f"and no train manifest holds a history): has this run trained?")
    return rows


def recipe_tree(root: str) -> dict[str, Any]:
    """The resolved recipe the run wrote (plain data: a recipe of another version still compares); {} if none."""
    import yaml

    for name in RECIPE_FILES:
        text = _read(storage.join(root, name))
        if text is not None:
            tree = yaml.safe_load(text)
            if isinstance(tree, dict):
                return tree
    return {}


def _section(tree: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = tree.get(key)
    return value if isinstance(value, dict) else {}


def tokens_per_step(tree: Mapping[str, Any], train: Manifest | None, model: Manifest | None) -> int | None:
    """Tokens per optimizer step: micro batch x accumulation x sequence length x world size, from the train
    manifest (its config and world size) or the recipe (nodes x processes per node)."""
    cfg = (train.config if train is not None and train.config else None) or _section(tree, "train")
    seq_len = _section(tree, "model").get("seq_len") or (model.config.get("seq_len") if model is not None else None)
    world = (train.stats.get("world_size") if train is not None else None) or (
        int(cfg.get("nnodes") or 1) * int(cfg.get("nproc_per_node") or 1) if cfg else None)
    parts = [cfg.get("micro_batch_size"), cfg.get("grad_accum_steps") or 1, seq_len, world] if cfg else [None]
    if any(_num(p) is None for p in parts):
        return None
    return int(math.prod(int(p) for p in parts))  # type: ignore[arg-type]


def _heldout(root: str, report: Mapping[str, Any] | None) -> dict[str, float | None]:
    """The overall held-out row of the evaluate report (either schema), else the evaluate manifest's stats."""
    found: Any = (report or {}).get("metrics")
    if not isinstance(found, dict) or not found:
        evaluation = _manifest(root, "evaluate")
        found = evaluation.stats if evaluation is not None else {}
    if isinstance(found.get("overall"), dict):
        found = found["overall"]
    return {k: _num(found.get(k)) for k in ("loss", "perplexity", "bits_per_byte")}


def summarize(root: str) -> dict[str, Any]:
    """One run's row of the comparison and its curves (x: tokens trained, or steps when unknown)."""
    train, model = _manifest(root, "train"), _manifest(root, "model")
    history = load_history(root, train)
    tree = recipe_tree(root)
    report_text = _read(storage.join(root, "evaluate", "report.json"))
    report = json.loads(report_text) if report_text else None
    stats = train.stats if train is not None else {}
    steps = stats.get("steps")
    if steps is None:
        steps = int(max(r["step"] for r in history))
    per_step = tokens_per_step(tree, train, model)
    trained = (train.extra.get("trained_tokens_by_source") if train is not None else None) or {}
    tokens_trained = int(sum(trained.values())) if trained else (per_step * steps if per_step else None)
    if per_step is None and tokens_trained and steps:
        per_step = round(tokens_trained / steps)
    val = [r for r in history if _num(r.get("val_loss")) is not None]
    final_val = stats.get("final_val_loss") if stats.get("final_val_loss") is not None else (
        val[-1]["val_loss"] if val else None)
    tasks = {name: _num(r.get("accuracy")) for name, r in ((report or {}).get("tasks") or {}).items()
             if isinstance(r, dict)}
    parameters = stats.get("parameters") or (model.stats.get("parameters") if model is not None else None)
    name = tree.get("name") or (report or {}).get("recipe") or root.rstrip("/").rsplit("/", 1)[-1]
    return {"run": root, "recipe": str(name), "parameters": parameters, "tokens_trained": tokens_trained,
            "tokens_per_step": per_step, "steps": steps, "final_val_loss": _num(final_val),
            "final_train_loss": _num(stats.get("final_train_loss")), "heldout": _heldout(root, report),
            "tasks": tasks, "wall_seconds": _num(stats.get("wall_seconds")),
            "curves": {"train_loss": _curve(history, "loss"), "val_loss": _curve(history, "val_loss")}}


def _curve(history: Sequence[Mapping[str, Any]], key: str) -> list[tuple[int, float]]:
    """(step, value) of the rows that carry a finite ``key``, by step."""
    return sorted((int(r["step"]), float(r[key])) for r in history if _num(r.get(key)) is not None)


def series_names(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """A distinct legend name per run: its recipe name, with the run folder (then its position) when shared."""
    names = [str(r["recipe"]) for r in runs]
    out = []
    for i, r in enumerate(runs):
        name = names[i]
        if names.count(name) > 1:
            name = f"{name} ({str(r['run']).rstrip('/').rsplit('/', 1)[-1]})"
        out.append(name)
    return [n if out.count(n) == 1 else f"{n} #{i + 1}" for i, n in enumerate(out)]


def curves(runs: Sequence[Mapping[str, Any]], key: str) -> tuple[dict[str, list[tuple[float, float]]], str]:
    """One series per run for ``key`` (``train_loss`` or ``val_loss``) against tokens trained; against steps
    when any run's tokens per step is unknown (one axis for all)."""
    by_tokens = all(r.get("tokens_per_step") for r in runs)
    out = {}
    for name, r in zip(series_names(runs), runs, strict=True):
        scale = r["tokens_per_step"] if by_tokens else 1
        out[name] = [(float(step * scale), value) for step, value in r["curves"][key]]
    return out, "tokens trained" if by_tokens else "step"


# -- the table --------------------------------------------------------------------------------------------------
def _fmt(v: Any, kind: str = "") -> str:
    n = _num(v)
    if n is None:
        return "-" if v is None else str(v)
    if kind == "pct":
        return f"{100 * n:.1f}%"
    if kind == "int":
        return f"{int(n):,}"
    if kind == "time":
        s = round(n)
        return f"{s // 3600}h {s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m {s % 60:02d}s"
    return f"{n:.4f}"


def table(runs: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """(headers, rows): one row per quantity, one column per run."""
    headers = ["", *series_names(runs)]
    spec: list[tuple[str, Any, str]] = [
        ("run root", lambda r: r["run"], "str"), ("recipe", lambda r: r["recipe"], "str"),
        ("parameters", lambda r: r["parameters"], "int"), ("tokens trained", lambda r: r["tokens_trained"], "int"),
        ("steps", lambda r: r["steps"], "int"), ("final train loss", lambda r: r["final_train_loss"], ""),
        ("final val loss", lambda r: r["final_val_loss"], ""),
        ("held-out loss", lambda r: r["heldout"]["loss"], ""),
        ("held-out perplexity", lambda r: r["heldout"]["perplexity"], ""),
        ("held-out bits per byte", lambda r: r["heldout"]["bits_per_byte"], "")]
    for task in sorted({t for r in runs for t in r["tasks"]}):
        spec.append((f"task {task} accuracy", lambda r, t=task: r["tasks"].get(t), "pct"))
    spec.append(("wall time", lambda r: r["wall_seconds"], "time"))
    rows = [[label, *(str(get(r)) if kind == "str" else _fmt(get(r), kind) for r in runs)]
            for label, get, kind in spec]
    return headers, rows


def format_table(runs: Sequence[Mapping[str, Any]]) -> str:
    """The table as aligned plain text (stdout)."""
    headers, rows = table(runs)
    grid = [headers, *rows]
    widths = [max(len(row[i]) for row in grid) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in grid]
    return "\n".join(line.rstrip() for line in lines)


def render_html(runs: Sequence[Mapping[str, Any]]) -> str:
    """One self-contained page (inline CSS and SVG, no script, no URL): the table and the overlaid curves."""
    from pretrain.report.page import CSS
    from pretrain.report.page import table as html_table
    from pretrain.report.sections import Table
    from pretrain.report.svg import line_chart

    headers, rows = table(runs)
    plots = []
    for key, plot_id, title in (("val_loss", "plot-compare-val-loss", "Validation loss"),
                                ("train_loss", "plot-compare-train-loss", "Training loss")):
        data, x_label = curves(runs, key)
        chart = line_chart(data, plot_id=plot_id, title=title, x_label=x_label, y_label="loss")
        plots.append(f"<figure>{chart}</figure>" if chart else
                     f'<p class="missing">Not available: {title.lower()} (no run logged it).</p>')
    names = html.escape(", ".join(series_names(runs)))
    return ('<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>pretrain compare: {names}</title><style>{CSS}</style></head><body>\n"
            f"<h1>pretrain compare</h1><p>{len(runs)} runs: {names}</p>\n"
            f'<section id="table"><h2>Runs</h2>{html_table(Table(headers, rows))}</section>\n'
            f'<section id="curves"><h2>Curves</h2>{"".join(plots)}</section>\n</body></html>\n')


def compare(run_roots: Sequence[str], out: str | None = None) -> dict[str, Any]:
    """Summarize each run root and, with ``out``, write compare.json and compare.html there; returns
    ``{"runs": [...], "headers": [...], "rows": [...]}``."""
    if not run_roots:
        raise CompareError("no run root to compare")
    runs = [summarize(str(r)) for r in run_roots]
    headers, rows = table(runs)
    result = {"runs": runs, "headers": headers, "rows": rows}
    if out is not None:
        storage.write_json(storage.join(out, "compare.json"), result)
        storage.write_text(storage.join(out, "compare.html"), render_html(runs))
    return result


def default_out() -> str:
    return str(Path("compare"))


__all__ = ["CompareError", "compare", "curves", "default_out", "format_table", "load_history", "recipe_tree",
           "render_html", "series_names", "summarize", "table", "tokens_per_step"]
