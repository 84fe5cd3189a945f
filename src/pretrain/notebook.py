"""Small helpers for the notebooks in ``notebooks/``: their cells stay short, and their logic is tested like the rest.

Everything here reads what a run wrote under its run root (a local folder or an ``s3://`` URL) and writes nothing
to it. A run root left as None is found the way a user expects right after ``make run``: ``runs/<name>`` in the
kernel's folder or a folder above it (JupyterLab starts kernels in ``notebooks/``), else in the repository this
package runs from. Plots are the report's inline SVG charts (:mod:`pretrain.report.svg`), so no plotting library is
needed; widgets are used only when ``ipywidgets`` is installed. Like the rest of the library, nothing here knows
of KFP: the notebooks that compile and submit call :mod:`pretrain.cli` and ``kfp`` themselves.
"""

from __future__ import annotations

import contextlib
import html
import io
import os
import random
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from pretrain import storage
from pretrain.config import (
    Recipe,
    RecipeError,
    apply_override,
    from_json,
    load_recipe,
    parse_override,
    resolve,
    validate,
)
from pretrain.manifest import MANIFEST_NAME, Manifest

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

DEFAULT_RECIPE = "quickstart"
ANSI = re.compile(r"\x1b\[[0-9;]*m")
STAGES = ("ingested", "kept", "dropped", "final")
# (history key, chart title, y label) of the training charts, in the order they are shown
TRAINING_CHARTS = (("loss", "Loss", "loss"), ("tokens_per_second", "Throughput", "tokens / s"),
                   ("samples_per_second", "Throughput", "samples / s"),  # image objectives
                   ("mfu", "Model FLOPs utilization", "MFU"), ("lr", "Learning rate", "learning rate"),
                   ("grad_norm", "Gradient norm", "grad norm"))


class RunRootError(FileNotFoundError):
    """A run root that is not there or holds no run; the message names the path and what to do."""


# -- finding runs --------------------------------------------------------------------------------------------------
def checkout_root() -> Path | None:
    """The source checkout this package runs from (``src/pretrain/..``), when it is one (an editable install)."""
    top = Path(__file__).resolve().parents[2]
    return top if _is_repository(top) else None


def _is_repository(path: Path) -> bool:
    return (path / "pyproject.toml").is_file() and (path / "recipes").is_dir()


def _cwd(cwd: str | os.PathLike[str] | None) -> Path:
    return Path(cwd if cwd is not None else os.getcwd()).resolve()


def candidate_run_roots(name: str, cwd: str | os.PathLike[str] | None = None) -> list[Path]:
    """Where a run of recipe ``name`` is looked for, in order: ``runs/<name>`` in ``cwd`` and each folder above
    it, then in the checkout this package runs from."""
    here = _cwd(cwd)
    found = [d / "runs" / name for d in (here, *here.parents)]
    top = checkout_root()
    if top is not None:
        found.append(top / "runs" / name)
    return list(dict.fromkeys(found))


def default_run_root(name: str, cwd: str | os.PathLike[str] | None = None) -> str:
    """The run root of a run of recipe ``name`` when none is given: an existing ``runs/<name>`` (see
    :func:`candidate_run_roots`), else ``runs/<name>`` in the repository around ``cwd`` or this package's
    checkout (where ``make run`` puts it), else in ``cwd``."""
    for path in candidate_run_roots(name, cwd):
        if path.is_dir():
            return str(path)
    here = _cwd(cwd)
    top = next((d for d in (here, *here.parents) if _is_repository(d)), None) or checkout_root() or here
    return str(top / "runs" / name)


def _local(path: str, cwd: str | os.PathLike[str] | None) -> Path:
    """A local run root as a user means it: absolute, else an existing folder relative to ``cwd``, else relative to
    the repository (``runs/x`` typed in a notebook started in ``notebooks/``)."""
    given = Path(path).expanduser()
    if given.is_absolute():
        return given
    here = _cwd(cwd)
    if (here / given).exists():
        return here / given
    top = next((d for d in (here, *here.parents) if _is_repository(d)), None) or checkout_root() or here
    return top / given


def recipe_name(recipe: str | None) -> str:
    """The ``name`` of a recipe (a bundled name, a YAML path or an s3:// URL): the folder its runs go to."""
    return load_recipe(recipe or DEFAULT_RECIPE).name


def find_run_root(run_root: str | None, recipe: str | None = DEFAULT_RECIPE,
                  cwd: str | os.PathLike[str] | None = None) -> str:
    """An existing run root: ``run_root`` as given (a local path, relative to ``cwd`` or else to the repository, or an
    s3:// URL), or when None the run of ``recipe`` found as :func:`default_run_root` does; :class:`RunRootError`
    naming the path(s) otherwise, so a notebook stops at its first cell with one clear line instead of a stack of
    reader errors."""
    if run_root:
        if storage.is_remote(str(run_root)):
            if not storage.exists(str(run_root)):
                raise RunRootError(f"run_root {run_root}: nothing is there (check the URL and the AWS_* settings)")
            return str(run_root).rstrip("/")
        path = _local(str(run_root), cwd)
        if not path.is_dir():
            raise RunRootError(f"run_root {path}: no such folder; pass the run root of a run (runs/<recipe name> "
                               "where it was started), or run the pipeline first")
        return str(path.resolve())
    name = recipe_name(recipe)
    for path in candidate_run_roots(name, cwd):
        if path.is_dir():
            return str(path)
    looked = ", ".join(str(p) for p in candidate_run_roots(name, cwd))
    raise RunRootError(f"no run of recipe {name!r} found (looked in {looked}): run it first (`make run`, "
                       f"`pretrain run {recipe or DEFAULT_RECIPE}` or notebooks/01-quickstart.ipynb) or pass run_root")


def prepare(recipe: str | None = DEFAULT_RECIPE, run_root: str | None = None, overrides: Sequence[str] = (),
            cwd: str | os.PathLike[str] | None = None) -> Recipe:
    """A recipe to run: ``recipe`` with dotted ``overrides``, its run root ``run_root`` (a relative path as in
    :func:`find_run_root`) or, when None, :func:`default_run_root` (the run ``make run`` made, so a finished run is
    reused step by step)."""
    cfg = load_recipe(recipe or DEFAULT_RECIPE, list(overrides))
    root = run_root or default_run_root(cfg.name, cwd)
    if not storage.is_remote(str(root)):
        root = str(_local(str(root), cwd))
    return resolve(validate({**cfg.model_dump(mode="json"), "run_root": str(root)}))


def open_run(recipe: str | None = DEFAULT_RECIPE, run_root: str | None = None,
             cwd: str | os.PathLike[str] | None = None) -> Recipe:
    """The recipe a run was made with (its run root's ``recipe.json``), its run root set to where the run is now;
    ``run_root`` None: the run of ``recipe`` (see :func:`find_run_root`). A run root without a recipe is a
    :class:`RunRootError` naming it."""
    root = find_run_root(run_root, recipe, cwd)
    try:
        text = storage.read_text(storage.join(root, "recipe.json"))
    except FileNotFoundError:
        raise RunRootError(f"{root}: no recipe.json, so no pipeline ran here (a run root holds recipe.json, "
                           "documents/, tokens/, train/ ...)") from None
    try:
        cfg = from_json(text)
    except ValueError as err:
        raise RecipeError(f"{storage.join(root, 'recipe.json')}: not a recipe of this version of pretrain: {err}"
                          ) from None
    return cfg.model_copy(update={"run_root": root})


def _root(run: Recipe | str) -> str:
    return run.root if isinstance(run, Recipe) else str(run)


# -- display -------------------------------------------------------------------------------------------------------
def charts(*svgs: str, note: str = "") -> Any:
    """Inline SVG charts (and a note) as one ``IPython.display.HTML`` object: one output a display handle can
    redraw. Empty charts (no data) are left out."""
    from IPython.display import HTML

    body = "".join(f"<div>{s}</div>" for s in svgs if s)
    return HTML((f"<p>{html.escape(note)}</p>" if note else "") + (body or "<p><em>nothing to plot yet</em></p>"))


def side_by_side(columns: Sequence[tuple[str, str]], chars: int = 600) -> str:
    """HTML of texts next to each other: (heading, text) per column, each text in a scrolling ``<pre>``."""
    cells = "".join(
        f'<div style="flex:1;min-width:0"><b>{html.escape(head)}</b><pre style="white-space:pre-wrap;'
        f'max-height:18em;overflow:auto;border:1px solid #ddd;padding:4px">{html.escape(text[:chars])}</pre></div>'
        for head, text in columns)
    return f'<div style="display:flex;gap:8px">{cells}</div>'


class _Tee(io.TextIOBase):
    """Writes everything to ``log`` and echoes the lines that match ``keep`` (colours stripped) to ``echo``."""

    def __init__(self, log: IO[str], echo: IO[str], keep: re.Pattern[str]) -> None:
        self.log, self.echo, self.keep, self.line = log, echo, keep, ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.log.write(text)
        self.line += text
        *done, self.line = self.line.split("\n")
        for line in done:
            plain = ANSI.sub("", line).strip()
            if self.keep.search(plain):
                self.echo.write(plain + "\n")
                self.echo.flush()
        return len(text)

    def flush(self) -> None:
        self.log.flush()


@contextlib.contextmanager
def pipeline_log(name: str, keep: str = r"Task .* finished with status|^pretrain:|^\[train\] \d+/\d+ steps|"
                 r"\[(train|eval)\] step=\d*00 ",
                 tail: int = 40) -> Iterator[str]:
    """Send a long local run's output (kfp.local prints every task's inputs and logs) to a log file and show only
    the lines matching ``keep`` (finished tasks, training progress); on an error, the log's last ``tail``
    lines are shown too. Yields the log's path."""
    path = os.path.join(tempfile.gettempdir(), f"pretrain-{name}-{time.strftime('%Y%m%d-%H%M%S')}.log")
    echo = sys.stdout
    print(f"log: {path}", flush=True)
    with open(path, "w", encoding="utf-8") as log:
        tee = _Tee(log, echo, re.compile(keep))
        try:
            with contextlib.redirect_stdout(tee), contextlib.redirect_stderr(tee):
                yield path
        except BaseException:
            log.flush()
            with open(path, encoding="utf-8", errors="replace") as f:
                lines = f.read().splitlines()[-tail:]
            echo.write("\n".join(ANSI.sub("", line) for line in lines) + "\n")
            raise


# -- the data ------------------------------------------------------------------------------------------------------
def data_facts(run: Recipe) -> dict[str, Any]:
    """What the data steps did, from their manifests (:func:`pretrain.data.facts.collect`: funnel, drops per
    rule, duplicate clusters, mixture, dates)."""
    from pretrain.data.facts import collect

    return collect(run)


def ledger(run: Recipe) -> pd.DataFrame:
    """The documents ledger per source (read, written, kept, duplicates, deduplicated; skipped and dropped
    summed), from the dedup manifest; it adds up or the row says ``balanced`` False."""
    import pandas as pd

    found = Manifest.load(run.url("dedup")).extra.get("ledger") or {}
    rows = {s: {"read": r["read"], "written": r["written"], "skipped": sum(r["skipped"].values()),
                "kept": r["kept"], "dropped": sum(r["dropped"].values()), "duplicates": r["duplicates"],
                "deduplicated": r["deduplicated"], "balanced": r["balanced"]}
            for s, r in (found.get("sources") or {}).items()}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("source")


def funnel_table(facts: Mapping[str, Any], unit: str = "documents") -> pd.DataFrame:
    """Documents (or ``unit="bytes"``) of each source (columns) at each data stage (rows: read, ingested, kept by
    filters, after dedup, in token shards), from :func:`data_facts`."""
    import pandas as pd

    stages = facts.get("funnel") or []
    table = pd.DataFrame({st["stage"]: {s: r.get(unit) for s, r in st["by_source"].items()} for st in stages}).T
    return table.rename_axis(index="stage", columns="source")


def funnel_chart(facts: Mapping[str, Any]) -> str:
    """The data funnel as a stacked bar chart (documents per stage and source), the report's own."""
    from pretrain.report.svg import bar_chart

    table = funnel_table(facts)
    series = {str(s): [None if v != v else v for v in table[s].tolist()] for s in table.columns}  # NaN -> no bar
    return bar_chart([str(i) for i in table.index], series, plot_id="plot-funnel-documents",
                     title="Data funnel: documents per step and source", value_label="documents", stacked=True)


def _shards(run: Recipe, stage: str) -> list[tuple[str, str]]:
    """(source, shard URL) of ``stage``: ingested documents, filter output kept or dropped, or final (after dedup)."""
    from pretrain.data.facts import filtered_manifests

    if stage not in STAGES:
        raise ValueError(f"stage {stage!r}: one of {', '.join(STAGES)}")
    if stage == "final":
        return [(s.meta.get("source", ""), s.url) for s in Manifest.load(run.url("dedup")).shards]
    if stage in ("kept", "dropped"):
        out = []
        for m in filtered_manifests(run):
            source = m.extra["partition"]["source"]
            listed = m.shards if stage == "kept" else [_shard(d) for d in m.extra.get("dropped", [])]
            out += [(source, s.url) for s in listed]
        return out
    fs, path = storage.filesystem(run.url("documents"))
    out = []
    for found in sorted(fs.glob(path.rstrip("/") + "/*/*.manifest.json")):
        m = Manifest.load(fs.unstrip_protocol(found) if storage.is_remote(run.root) else found)
        out += [(m.extra.get("partition", {}).get("source") or Path(found).parent.name, s.url) for s in m.shards]
    return out


def _shard(d: Mapping[str, Any]) -> Any:
    from pretrain.manifest import Shard

    return Shard(**d)


def documents(run: Recipe, stage: str = "final", source: str | None = None, limit: int | None = None,
              columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Documents of the run at ``stage`` (``ingested``, ``kept``/``dropped`` by the filters, ``final`` after dedup)
    as a DataFrame, of one ``source`` or all, at most ``limit`` per source; dropped ones carry ``reason`` and the
    ``value`` that tripped it."""
    return _table(run, stage, source, limit, columns).to_pandas()


def _table(run: Recipe, stage: str, source: str | None, limit: int | None,
           columns: Sequence[str] | None = None) -> pa.Table:
    import pyarrow as pa

    from pretrain.data.documents import DROPPED_SCHEMA, SCHEMA, iter_batches

    schema = DROPPED_SCHEMA if stage == "dropped" else SCHEMA
    names = list(columns) if columns else schema.names
    known = {s.name for s in run.sources}
    if source is not None and source not in known:
        raise ValueError(f"source {source!r}: the run's sources are {', '.join(sorted(known))}")
    batches: list[pa.RecordBatch] = []
    counts: dict[str, int] = {}
    for src, url in _shards(run, stage):
        if source is not None and src != source:
            continue
        for batch in iter_batches(url, columns=names):
            room = None if limit is None else limit - counts.get(src, 0)
            if room is not None and room <= 0:
                break
            batch = batch if room is None else batch.slice(0, room)
            counts[src] = counts.get(src, 0) + batch.num_rows
            batches.append(batch)
    return pa.Table.from_batches(batches, schema=pa.schema([schema.field(n) for n in names]))


def drops_by_rule(dropped: pd.DataFrame) -> pd.DataFrame:
    """Documents dropped per rule (rows) and source (columns), most first."""
    table = dropped.groupby(["reason", "source"]).size().unstack(fill_value=0)
    return table.loc[table.sum(axis=1).sort_values(ascending=False).index]


def drop_examples(dropped: pd.DataFrame, per_rule: int = 3, chars: int = 160) -> pd.DataFrame:
    """A few dropped documents per rule with the value that tripped it and the start of their text."""
    shown = dropped.assign(text=dropped["text"].str.slice(0, chars))
    return shown.groupby("reason", group_keys=False).head(per_rule)[["reason", "value", "source", "id", "url", "text"]]


def duplicate_clusters(run: Recipe, largest: int = 5) -> list[dict[str, Any]]:
    """The largest duplicate clusters dedup reported: size and members (role kept/exact/fuzzy, source, id, url,
    the start of the text)."""
    samples = (Manifest.load(run.url("dedup")).extra.get("clusters") or {}).get("samples") or []
    ranked = sorted(samples, key=lambda c: -int(c.get("size", len(c.get("members", [])))))
    return [{"size": int(c.get("size", len(c.get("members", [])))), "members": list(c.get("members", []))}
            for c in ranked[:largest]]


def clusters_side_by_side(clusters: Iterable[Mapping[str, Any]], members: int = 3) -> Any:
    """Each cluster's first ``members`` documents next to each other (the kept copy first), as HTML."""
    from IPython.display import HTML

    parts = []
    for i, c in enumerate(clusters, 1):
        shown = sorted(c["members"], key=lambda m: m.get("role") != "kept")[:members]
        cols = [(f"{m.get('role', '?')} · {m.get('source', '?')} · {m.get('id', '?')}", str(m.get("text") or ""))
                for m in shown]
        parts.append(f"<h4>cluster {i}: {c['size']} documents</h4>" + side_by_side(cols))
    return HTML("".join(parts) or "<p>no duplicate clusters</p>")


def browse(frame: pd.DataFrame, chars: int = 2000) -> Any:
    """One document at a time with a source menu and a slider when ``ipywidgets`` is installed; else the first
    documents of each source as a table."""
    try:
        import ipywidgets as widgets
    except ImportError:
        return frame.assign(text=frame["text"].str.slice(0, 200)).groupby("source").head(3)
    from IPython.display import HTML, display

    sources = sorted(frame["source"].unique())
    menu = widgets.Dropdown(options=sources, description="source")
    pick = widgets.IntSlider(min=0, max=max(0, int((frame["source"] == sources[0]).sum()) - 1) if sources else 0,
                             description="document")
    out = widgets.Output()

    def show(*_: Any) -> None:
        rows = frame[frame["source"] == menu.value]
        pick.max = max(0, len(rows) - 1)
        out.clear_output(wait=True)
        if len(rows):
            row = rows.iloc[min(pick.value, len(rows) - 1)]
            with out:
                display(HTML(f"<b>{html.escape(str(row['id']))}</b> {html.escape(str(row.get('url', '')))}"
                             + side_by_side([("text", str(row["text"]))], chars)))

    menu.observe(show, "value")
    pick.observe(show, "value")
    show()
    return widgets.VBox([widgets.HBox([menu, pick]), out])


def try_rule_change(run: Recipe, overrides: Sequence[str], sample: int = 200, source: str | None = None,
                    seed: int = 0) -> pd.DataFrame:
    """Judge a sample of the run's ingested documents with the run's rules and with ``overrides`` applied
    (dotted recipe keys, e.g. ``filter.min_chars=400``), by the filter library itself, in memory.

    One row per sampled document: ``before`` and ``after`` (the rule that drops it, or ``kept``), the values that
    tripped them, and ``changed``. ``sample`` documents per source at most, drawn with ``seed``."""
    import pandas as pd
    import pyarrow as pa

    from pretrain.data.filters.step import chain_for, filter_batch

    tree = run.model_dump(mode="json")
    for item in overrides:
        apply_override(tree, *parse_override(item))
    changed = validate(tree, "(with the rule change)")
    rows = []
    for src in run.sources:
        if source is not None and src.name != source:
            continue
        table = _table(run, "ingested", src.name, None)
        if table.num_rows == 0:
            continue
        picked = sorted(random.Random(seed).sample(range(table.num_rows), min(sample, table.num_rows)))
        batch = table.take(pa.array(picked, pa.int64())).combine_chunks().to_batches()[0]
        verdicts = []
        for cfg in (run, changed):
            _, dropped = filter_batch(batch, chain_for(cfg.filter, src.profile))
            verdicts.append(dict(zip(dropped["id"].to_pylist(),
                                     zip(dropped["reason"].to_pylist(), dropped["value"].to_pylist(), strict=True),
                                     strict=True)))
        for doc_id, text in zip(batch.column("id").to_pylist(), batch.column("text").to_pylist(), strict=True):
            (b, bv), (a, av) = (v.get(doc_id, ("kept", None)) for v in verdicts)
            rows.append({"source": src.name, "id": doc_id, "before": b, "before_value": bv, "after": a,
                         "after_value": av, "changed": a != b, "text": (text or "")[:160]})
    return pd.DataFrame(rows, columns=["source", "id", "before", "before_value", "after", "after_value", "changed",
                                       "text"])


def rule_change_summary(trial: pd.DataFrame) -> pd.DataFrame:
    """Per source: documents sampled, dropped before and after the change, newly dropped and newly kept."""
    dropped_before, dropped_after = trial["before"] != "kept", trial["after"] != "kept"
    frame = trial.assign(dropped_before=dropped_before, dropped_after=dropped_after,
                         newly_dropped=dropped_after & ~dropped_before, newly_kept=dropped_before & ~dropped_after)
    return frame.groupby("source")[["dropped_before", "dropped_after", "newly_dropped", "newly_kept"]].sum().assign(
        sampled=frame.groupby("source").size())


# -- training ------------------------------------------------------------------------------------------------------
def history(run: Recipe | str) -> pd.DataFrame:
    """The run's training metrics (``train/metrics.jsonl``, else the train manifest's history), one row per step
    (a step's training and evaluation rows merged); a ``CompareError`` naming the run root when there are none."""
    import pandas as pd

    from pretrain.evaluate.compare import load_history

    frame = pd.DataFrame(load_history(_root(run)))
    return frame.groupby("step", as_index=False).first().sort_values("step").reset_index(drop=True)


def training_finished(run: Recipe | str) -> bool:
    """Whether training has ended: the train step's manifest is written last."""
    return storage.exists(storage.join(_root(run), "train", MANIFEST_NAME))


def training_charts(hist: pd.DataFrame | None, keys: Sequence[str] | None = None) -> list[str]:
    """SVG line charts of loss (training and validation), tokens/s, MFU, learning rate and gradient norm (or only
    ``keys`` of them), of what the run has logged: a chart for a metric it never logged is left out."""
    from pretrain.report.svg import line_chart

    if hist is None or hist.empty:
        return []
    out = []
    for key, title, label in TRAINING_CHARTS:
        if keys is not None and key not in keys:
            continue
        columns = [key, "val_loss"] if key == "loss" else [key]
        series = {("validation" if k == "val_loss" else "training" if key == "loss" else label):
                  [(float(s), float(v)) for s, v in zip(hist["step"], hist[k], strict=True) if v == v]
                  for k in columns if k in hist}
        chart = line_chart(series, plot_id=f"plot-{key.replace('_', '-')}", title=title, x_label="step", y_label=label)
        if chart:
            out.append(chart)
    return out


def status(run: Recipe | str, hist: pd.DataFrame | None) -> str:
    """One line: finished or training, the last step logged out of the recipe's ``train.max_steps``, and the last
    training loss and tokens/s."""
    from pretrain.evaluate.compare import recipe_tree

    total = (recipe_tree(_root(run)).get("train") or {}).get("max_steps")
    state = "finished" if training_finished(run) else "training"
    if hist is None or hist.empty:
        return f"{state}: no metrics logged yet"
    last = int(hist["step"].max())
    parts = [f"{state}: step {last}" + (f" of {total}" if total else "")]
    for key, fmt in (("loss", "loss {:.4f}"), ("tokens_per_second", "{:,.0f} tokens/s"),
                     ("samples_per_second", "{:,.0f} samples/s"), ("mfu", "MFU {:.3f}")):
        if key in hist and hist[key].notna().any():
            parts.append(fmt.format(float(hist[key].dropna().iloc[-1])))
    return ", ".join(parts)


def follow(run: Recipe | str, live: bool = True, interval: float = 10.0, timeout: float | None = None,
           show: Callable[[pd.DataFrame | None, str], None] | None = None) -> pd.DataFrame | None:
    """Draw the training charts of a run and, with ``live``, redraw them every ``interval`` seconds while it
    trains, until it ends (its train manifest appears) or ``timeout`` seconds pass; interrupt the cell to stop
    earlier. Returns the last history (None when nothing was logged). ``show(history, status)`` replaces the
    display (the default draws into one output that is redrawn in place)."""
    from pretrain.evaluate.compare import CompareError

    handle = None
    if show is None:
        from IPython.display import display

        handle = display(charts(note="waiting for the first metrics"), display_id=True)

        def show(hist: pd.DataFrame | None, line: str) -> None:
            handle.update(charts(*training_charts(hist), note=line))

    start = time.monotonic()
    hist = None
    while True:
        done = training_finished(run)  # before reading: a run that ends now is drawn complete on the next pass
        try:
            hist = history(run)
        except CompareError:
            hist = None
        show(hist, status(run, hist))
        if done or not live or (timeout is not None and time.monotonic() - start >= timeout):
            return hist
        time.sleep(interval)


def evaluation(run: Recipe | str) -> pd.Series:
    """The evaluate step's headline numbers (held-out loss, perplexity, bits per byte, ...)."""
    import pandas as pd

    stats = Manifest.load(storage.join(_root(run), "evaluate")).stats
    return pd.Series({k: v for k, v in stats.items() if isinstance(v, (int, float))}, name="value")


def compare_runs(roots: Sequence[str]) -> tuple[pd.DataFrame, list[str]]:
    """Runs side by side (:mod:`pretrain.evaluate.compare`): the table (one column per run) and the overlaid
    validation and training loss curves, against tokens trained."""
    import pandas as pd

    from pretrain.evaluate.compare import compare, curves
    from pretrain.report.svg import line_chart

    result = compare(list(roots))
    headers, rows = result["headers"], result["rows"]
    table = pd.DataFrame([r[1:] for r in rows], index=[r[0] for r in rows], columns=headers[1:])
    plots = []
    for key, title in (("val_loss", "Validation loss"), ("train_loss", "Training loss")):
        data, x_label = curves(result["runs"], key)
        plots.append(line_chart(data, plot_id=f"plot-compare-{key.replace('_', '-')}", title=title,
                                x_label=x_label, y_label="loss"))
    return table, [p for p in plots if p]


__all__ = ["STAGES", "RunRootError", "browse", "candidate_run_roots", "charts", "checkout_root",
           "clusters_side_by_side", "compare_runs", "data_facts", "default_run_root", "documents", "drop_examples",
           "drops_by_rule", "duplicate_clusters", "evaluation", "find_run_root", "follow", "funnel_chart",
           "funnel_table", "history", "ledger", "open_run", "pipeline_log", "prepare", "recipe_name",
           "rule_change_summary", "side_by_side", "status", "training_charts", "training_finished", "try_rule_change"]
