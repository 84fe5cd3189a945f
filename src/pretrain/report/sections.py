"""The evaluation report as a list of sections (tables, notes, plots, samples) that Markdown and HTML both render.

Built once from the report dict (schema: ``pretrain.evaluate.step``), so the two outputs never disagree. Every
part of the dict may be missing or None (a run stopped early, a masked LM with no samples, a report from an older
version): its section then says "not available" instead of failing. An image run's report (``modality`` image or
image_text, with an ``images`` part) has its own results sections (``pretrain.report.images``) and counts samples.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pretrain.report import svg
from pretrain.report.summary import fmt


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    pre: frozenset[int] = frozenset()  # columns that hold document text (shown preformatted)


@dataclass
class Note:
    text: str
    missing: bool = False  # a "not available" note


@dataclass
class Plot:
    svg: str  # inline SVG (HTML only; Markdown points to the HTML report)
    title: str


@dataclass
class Code:
    title: str
    text: str


@dataclass
class Gallery:
    """Images with caption lines (HTML only: Markdown lists the captions). ``uri``: a ``data:image/...;base64``
    URI, the only kind the page embeds (anything else is left out, so the page stays self-contained)."""

    items: list[tuple[str, list[str]]]


@dataclass
class Section:
    id: str
    title: str
    level: int = 2
    blocks: list[Table | Note | Plot | Code | Gallery] = field(default_factory=list)

    def missing(self, what: str) -> Section:
        self.blocks.append(Note(f"Not available: {what}.", missing=True))
        return self


def pct(share: Any) -> str:
    return "-" if not isinstance(share, (int, float)) or isinstance(share, bool) else f"{100 * share:.1f}%"


def human_bytes(n: Any) -> str:
    if not isinstance(n, (int, float)) or isinstance(n, bool):
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return "-"


def _dict(v: Any) -> dict:
    return v if isinstance(v, Mapping) else {}


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def heldout(report: Mapping[str, Any]) -> tuple[dict, dict]:
    """(overall, by_source) held-out metrics; an older flat ``metrics`` dict is the overall row."""
    m = _dict(report.get("metrics"))
    if "overall" in m or "by_source" in m:
        return _dict(m.get("overall")), _dict(m.get("by_source"))
    return dict(m), {}


def data_part(report: Mapping[str, Any]) -> dict:
    return _dict(report.get("data"))


def mixture(report: Mapping[str, Any]) -> tuple[dict, dict | None]:
    """(planned mixture, trained tokens by source or None), from ``data`` or an older report's top level."""
    data = data_part(report)
    mix = _dict(data.get("mixture")) or _dict(report.get("mixture"))
    trained = data.get("trained_tokens_by_source")
    if trained is None:
        trained = report.get("trained_tokens_by_source")
    return mix, (_dict(trained) if trained is not None else None)


def series(history: Any, key: str, scale: float = 1.0) -> list[tuple[float, float]]:
    """(step, value) of every history row that has a finite ``key``."""
    out = []
    for row in history if isinstance(history, list) else []:
        if not isinstance(row, Mapping):
            continue
        x, y = _num(row.get("step")), _num(row.get(key))
        if x is not None and y is not None:
            out.append((x, y * scale))
    return out


def all_sources(report: Mapping[str, Any]) -> list[str]:
    """Every source the report names, sorted: one order, so a source keeps its colour from plot to plot."""
    data = data_part(report)
    names = set(_dict(data.get("sources"))) | set(mixture(report)[0]) | set(heldout(report)[1])
    for st in data.get("funnel") or []:
        names |= set(_dict(_dict(st).get("by_source")))
    for r in _dict(data.get("drops")).values():
        names |= set(_dict(_dict(r).get("by_source")))
    names |= set(_dict(_dict(data.get("dates")).get("by_source")))
    return sorted(map(str, names))


def _years(years: set[str]) -> list[str]:
    """Sorted years, gaps filled (a year with no document is a fact worth seeing) when all are numbers."""
    if years and all(y.isdigit() for y in years):
        lo, hi = min(map(int, years)), max(map(int, years))
        if hi - lo < 200:
            return [str(y) for y in range(lo, hi + 1)]
    return sorted(years)


# ---- the sections ---------------------------------------------------------------------------------------------

def summary(report: Mapping[str, Any]) -> Section:
    s = Section("summary", "Summary")
    overall, _ = heldout(report)
    rows = [["recipe", fmt(report.get("recipe"))], ["objective", fmt(report.get("objective"))]]
    for key, label in (("loss", "held-out loss"), ("perplexity", "perplexity"), ("bits_per_byte", "bits per byte"),
                       ("masked_accuracy", "masked-token accuracy"), ("tokens", "held-out tokens")):
        if key in overall:
            v = overall[key]
            rows.append([label, fmt(int(v) if key == "tokens" and isinstance(v, float) and v.is_integer() else v)])
    cutoff = _dict(data_part(report).get("dates")).get("knowledge_cutoff")
    if cutoff:
        rows.append(["knowledge cutoff (latest train document date)", str(cutoff)])
    rows += [[f"train: {k}", fmt(v)] for k, v in _dict(report.get("train")).items()]
    s.blocks.append(Table(["", ""], rows))
    if not overall:
        s.missing("held-out metrics")
    for note in report.get("notes") or []:  # what the evaluation skipped, and why
        s.blocks.append(Note(str(note)))
    return s


def training(report: Mapping[str, Any], optional: frozenset[str] = frozenset()) -> Section:
    """Loss, learning rate, throughput and MFU over steps; a chart without values says so unless its id is in
    ``optional`` (MFU of an image run, whose FLOPs need not be counted)."""
    s = Section("training", "Training")
    hist = report.get("history")
    if not hist:
        return s.missing("training history (train/metrics.jsonl)")
    tokens, samples = series(hist, "tokens_per_second"), series(hist, "samples_per_second")  # text / image runs
    rate = ({"tokens/s": tokens}, "tokens per second") if tokens or not samples else \
        ({"samples/s": samples}, "samples per second")
    charts = (
        ("plot-loss", "Loss", {"train": series(hist, "loss"), "validation": series(hist, "val_loss")}, "loss"),
        ("plot-lr", "Learning rate", {"lr": series(hist, "lr")}, "learning rate"),
        ("plot-throughput", "Throughput", *rate),
        ("plot-mfu", "Model FLOPs utilization", {"MFU": series(hist, "mfu", 100.0)}, "MFU (% of peak)"),
    )
    for plot_id, title, data, y_label in charts:
        chart = svg.line_chart({k: v for k, v in data.items() if v}, plot_id=plot_id, title=title, x_label="step",
                               y_label=y_label)
        if chart:
            s.blocks.append(Plot(chart, title))
        elif plot_id not in optional:
            s.missing(f"{title.lower()} (no such values in the training history)")
    return s


def heldout_section(report: Mapping[str, Any]) -> Section:
    s = Section("heldout", "Held-out evaluation")
    overall, by_source = heldout(report)
    if not overall and not by_source:
        return s.missing("held-out metrics")
    masked = any("masked_accuracy" in r for r in [overall, *map(_dict, by_source.values())])
    headers = ["source", "loss", "perplexity", "bits per byte", "tokens"] + (["masked accuracy"] if masked else [])

    def row(name: str, r: Mapping[str, Any]) -> list[str]:
        out = [name, fmt(r.get("loss")), fmt(r.get("perplexity")), fmt(r.get("bits_per_byte")),
               fmt(int(r["tokens"]) if _num(r.get("tokens")) is not None else r.get("tokens"))]
        return out + ([pct(r.get("masked_accuracy"))] if masked else [])

    rows = [row(name, _dict(r)) for name, r in sorted(by_source.items())]
    if overall:
        rows.append(row("all", overall))
    if by_source:
        names = sorted(by_source)
        bpb = [_num(_dict(by_source[n]).get("bits_per_byte")) for n in names]
        key, label = (("bits_per_byte", "bits per byte (lower is better)") if all(v is not None for v in bpb)
                      else ("loss", "loss (lower is better)"))
        chart = svg.bar_chart(names, {key: [_num(_dict(by_source[n]).get(key)) for n in names]},
                              plot_id="plot-heldout", title="Held-out results per source", value_label=label)
        if chart:
            s.blocks.append(Plot(chart, "Held-out results per source"))
    else:
        s.blocks.append(Note("Per-source results not available (overall only)."))
    s.blocks.append(Table(headers, rows))
    return s


def tasks(report: Mapping[str, Any]) -> Section:
    s = Section("tasks", "Task accuracy")
    t = _dict(report.get("tasks"))
    if not t:
        return s.missing("task accuracy (no tasks were run)")
    names = sorted(t)
    acc = [_num(_dict(t[n]).get("accuracy")) for n in names]
    chance = [_num(_dict(t[n]).get("chance")) for n in names]
    chart = svg.bar_chart(names, {"accuracy": acc, "chance": chance}, plot_id="plot-tasks",
                          title="Task accuracy vs chance", value_label="accuracy")
    if chart:
        s.blocks.append(Plot(chart, "Task accuracy vs chance"))
    rows = []
    for n, a, c in zip(names, acc, chance, strict=True):
        r, d = _dict(t[n]), _dict(_dict(t[n]).get("decontamination"))
        decon = (f"{d.get('ngram', '?')}-gram: {fmt(d.get('checked'))} checked, {fmt(d.get('contaminated'))} "
                 f"contaminated, {fmt(d.get('removed'))} removed" if d else "-")
        rows.append([n, pct(a), pct(c), f"{100 * (a - c):+.1f} pts" if a is not None and c is not None else "-",
                     fmt(r.get("items")), fmt(r.get("metric")), decon])
    s.blocks.append(Table(["task", "accuracy", "chance", "above chance", "items", "metric", "decontamination"],
                          rows))
    return s


def sources(data: Mapping[str, Any]) -> Section:
    s = Section("data-sources", "Sources", 3)
    src = _dict(data.get("sources"))
    if not src:
        return s.missing("per-source document and token counts")
    if any("train_samples" in _dict(r) for r in src.values()):  # an image run
        rows = [[n, fmt(r.get("samples")), fmt(r.get("train_samples")), fmt(r.get("val_samples")),
                 fmt(_dict(r.get("licenses")))] for n, r in ((n, _dict(r)) for n, r in sorted(src.items()))]
        s.blocks.append(Table(["source", "samples", "train samples", "validation samples", "licences (samples)"],
                              rows))
        return s
    rows = [[n, fmt(r.get("documents")), fmt(r.get("train_tokens")), fmt(r.get("val_tokens")),
             fmt(_dict(r.get("licenses")))] for n, r in ((n, _dict(r)) for n, r in sorted(src.items()))]
    s.blocks.append(Table(["source", "documents", "train tokens", "validation tokens", "licences (documents)"],
                          rows))
    return s


def funnel(data: Mapping[str, Any], srcs: list[str], noun: str = "documents") -> Section:
    """``noun``: what the rows count (``samples`` in an image run; the data keeps the key ``documents``)."""
    s = Section("data-funnel", "Data funnel", 3)
    stages = [_dict(st) for st in data.get("funnel") or [] if isinstance(st, Mapping)]
    if not stages:
        return s.missing(f"the data funnel ({noun} and bytes per step and source)")
    names = [str(st.get("stage", f"stage {i}")) for i, st in enumerate(stages)]
    for unit, plot_id, label in (("documents", "plot-funnel-documents", noun),
                                 ("bytes", "plot-funnel-bytes", "bytes")):
        values = {src: [_num(_dict(_dict(st.get("by_source")).get(src)).get(unit)) for st in stages] for src in srcs}
        chart = svg.bar_chart(names, values, plot_id=plot_id, title=f"Data funnel: {label} per step and source",
                              value_label=label, stacked=True)
        if chart:
            s.blocks.append(Plot(chart, f"Data funnel ({label})"))
        else:
            s.missing(f"{label} per step")
    first = {src: _num(_dict(_dict(stages[0].get("by_source")).get(src)).get("documents")) for src in srcs}
    rows = []
    for name, st in zip(names, stages, strict=True):
        for src in srcs:
            r = _dict(_dict(st.get("by_source")).get(src))
            if not r:
                continue
            docs, base = _num(r.get("documents")), first.get(src)
            rows.append([name, src, fmt(r.get("documents")), human_bytes(r.get("bytes")),
                         pct(docs / base) if docs is not None and base else "-"])
    s.blocks.append(Table(["step", "source", noun, "bytes", f"of {names[0]}"], rows))
    return s


def drops(data: Mapping[str, Any], srcs: list[str], noun: str = "documents") -> Section:
    s = Section("data-drops", "Drops per rule", 3)
    d = _dict(data.get("drops"))
    if not d:
        return s.missing("drop reasons (no filter dropped anything, or the filter manifests are missing)")
    rules = sorted(d, key=lambda k: (-(_num(_dict(d[k]).get("documents")) or 0), k))
    values = ({src: [_num(_dict(_dict(d[r]).get("by_source")).get(src)) for r in rules] for src in srcs}
              if any(_dict(_dict(d[r]).get("by_source")) for r in rules)
              else {"documents": [_num(_dict(d[r]).get("documents")) for r in rules]})
    title = f"{noun.capitalize()} dropped per rule"
    chart = svg.bar_chart(rules, values, plot_id="plot-drops", title=title, value_label=noun, stacked=True)
    if chart:
        s.blocks.append(Plot(chart, title))
    rows = []
    for r in rules:
        row, sample = _dict(d[r]), _dict(_dict(d[r]).get("sample"))
        rows.append([r, fmt(row.get("documents")), fmt(_dict(row.get("by_source"))),
                     f"{sample.get('source', '?')} / {sample.get('id', '?')}" if sample else "-",
                     fmt(sample.get("value")) if sample else "-", str(sample.get("text", "")) if sample else "-"])
    s.blocks.append(Table(["rule", noun, "by source", "sample (source / id)", "value", "sample text"], rows,
                          pre=frozenset({5})))
    return s


def duplicates(data: Mapping[str, Any]) -> Section:
    s = Section("data-duplicates", "Duplicate clusters (largest)", 3)
    clusters = [_dict(c) for c in data.get("duplicate_clusters") or [] if isinstance(c, Mapping)]
    if not clusters:
        return s.missing("duplicate clusters (none found, or dedup's cluster report is missing)")
    rows = []
    for i, c in enumerate(clusters, 1):
        for j, m in enumerate(_dict(x) for x in c.get("members") or []):
            rows.append([str(i) if j == 0 else "", fmt(c.get("size")) if j == 0 else "", fmt(m.get("source")),
                         fmt(m.get("id")), str(m.get("text", ""))])
    s.blocks.append(Table(["cluster", "size", "source", "id", "text"], rows, pre=frozenset({4})))
    return s


def mixture_section(report: Mapping[str, Any]) -> Section:
    s = Section("data-mixture", "Realized mixture", 3)
    mix, trained = mixture(report)
    if not mix:
        return s.missing("the training mixture (tokens manifest)")
    names = sorted(mix)
    plot = {"planned": [_num(_dict(mix[n]).get("planned_tokens")) for n in names]}
    if trained is not None:
        plot["trained"] = [_num(trained.get(n, 0)) for n in names]
    plot["available"] = [_num(_dict(mix[n]).get("available_tokens")) for n in names]
    chart = svg.bar_chart(names, plot, plot_id="plot-mixture", title="Mixture: planned vs trained tokens",
                          value_label="tokens")
    if chart:
        s.blocks.append(Plot(chart, "Mixture: planned vs trained tokens"))
    rows = []
    for n in names:
        m = _dict(mix[n])
        planned, got = _num(m.get("planned_tokens")), _num(trained.get(n, 0)) if trained is not None else None
        rows.append([n, f"{m['weight']:.3f}" if _num(m.get("weight")) is not None else "-",
                     fmt(m.get("available_tokens")), fmt(m.get("planned_tokens")),
                     f"{m['epochs']:.2f}" if _num(m.get("epochs")) is not None else "-",
                     fmt(int(got)) if got is not None else "-", pct(got / planned) if got is not None and planned
                     else "-"])
    s.blocks.append(Table(["source", "weight", "available tokens", "planned tokens", "epochs", "trained tokens",
                           "trained / planned"], rows))
    if trained is None:
        s.blocks.append(Note("Trained tokens per source not available (the checkpoints manifest does not say)."))
    return s


def dates(data: Mapping[str, Any], srcs: list[str]) -> Section:
    s = Section("data-dates", "Knowledge cutoff and document dates", 3)
    d = _dict(data.get("dates"))
    if not d:
        return s.missing("document dates")
    cutoff = d.get("knowledge_cutoff")
    basis = d.get("basis") or "latest document date in the train split"
    s.blocks.append(Note(f"Knowledge cutoff: {cutoff} ({basis})." if cutoff else
                         "Knowledge cutoff: unknown (no train document carries a date)."))
    by = _dict(d.get("by_source"))
    years = _years({str(y) for r in by.values() for y in _dict(_dict(r).get("by_year"))})
    if years:
        chart = svg.bar_chart(years, {n: [_num(_dict(_dict(by.get(n)).get("by_year")).get(y)) for y in years]
                                      for n in srcs},
                              plot_id="plot-dates", title="Train documents per year", value_label="documents",
                              stacked=True)
        if chart:
            s.blocks.append(Plot(chart, "Train documents per year"))
    if by:
        s.blocks.append(Table(["source", "dated", "undated", "earliest", "latest"],
                              [[n, fmt(_dict(r).get("dated")), fmt(_dict(r).get("undated")),
                                fmt(_dict(r).get("earliest")), fmt(_dict(r).get("latest"))]
                               for n, r in sorted(by.items())]))
    return s


def curation(data: Mapping[str, Any]) -> Section:
    s = Section("data-curation", "Data curation", 3)
    c = _dict(data.get("curation"))
    if not c:
        return s.missing("curation shares (toxic, low quality, duplicate, PII)")
    rows = [[n, fmt(r.get("documents_in")), pct(r.get("toxic")), pct(r.get("low_quality")), pct(r.get("duplicate")),
             pct(r.get("other_dropped")), fmt(_dict(r.get("pii_redactions")))]
            for n, r in ((n, _dict(r)) for n, r in sorted(c.items()))]
    s.blocks.append(Table(["source", "documents in", "toxic", "low quality", "duplicate", "other dropped",
                           "PII redactions"], rows))
    return s


def ledger_section(report: Mapping[str, Any]) -> Section:
    s = Section("data-ledger", "Documents ledger", 3)
    led = _dict(report.get("ledger"))
    if not led.get("sources"):
        return s.missing("the documents ledger")
    s.blocks.append(Note("Every document read is accounted for: read = written + skipped; "
                         "written = kept + dropped; kept = final + duplicates."))

    def reasons(counts: Any) -> str:
        items = sorted(_dict(counts).items(), key=lambda kv: (-(kv[1] or 0), kv[0]))
        return ", ".join(f"{k} {fmt(v)}" for k, v in items) or "none"

    rows = []
    for name, r in [*sorted(led["sources"].items()), ("all", led.get("total"))]:
        r = _dict(r)
        rows.append([name, fmt(r.get("read")), fmt(r.get("written")), reasons(r.get("skipped")),
                     reasons(r.get("dropped")), fmt(r.get("duplicates")), fmt(r.get("deduplicated")),
                     "yes" if r.get("balanced") else "NO"])
    s.blocks.append(Table(["source", "read", "written", "skipped (by reason)", "dropped by filters", "duplicates",
                           "final", "adds up"], rows))
    return s


def pipeline(report: Mapping[str, Any]) -> Section | None:
    """The headline counts an older report carried as ``steps``; None when absent (the funnel replaces them)."""
    steps = _dict(report.get("steps"))
    if not steps:
        return None
    return Section("data-steps", "Pipeline counts", 3, [Table(["", ""], [[k, fmt(v)] for k, v in steps.items()])])


def samples(report: Mapping[str, Any]) -> Section:
    s = Section("samples", "Samples")
    items = [_dict(x) for x in report.get("samples") or [] if isinstance(x, Mapping)]
    if not items:
        return s.missing("generated samples (none for a masked LM, or no prompts in the recipe)")
    s.blocks += [Code(str(x.get("prompt", "")).strip() or "(empty prompt)",
                      str(x.get("prompt", "")) + str(x.get("completion", ""))) for x in items]
    return s


def build(report: Mapping[str, Any]) -> list[Section]:
    """Every section of the report, in reading order: results first, then how the data got there."""
    if is_image(report):
        from pretrain.report.images import build_image

        return build_image(report)
    data, srcs = data_part(report), all_sources(report)
    out = [summary(report), training(report), heldout_section(report), tasks(report),
           Section("data", "Data"), sources(data), funnel(data, srcs), drops(data, srcs), duplicates(data),
           mixture_section(report), dates(data, srcs), curation(data), ledger_section(report)]
    if (steps := pipeline(report)) is not None:
        out.append(steps)
    out.append(samples(report))
    return out


def is_image(report: Mapping[str, Any]) -> bool:
    """An image run's report (its own results sections, counts of samples)."""
    return report.get("modality") in ("image", "image_text") or isinstance(report.get("images"), Mapping)


def unavailable(sections: list[Section]) -> list[str]:
    """Titles of the sections with a "not available" note: the report says up front what it lacks."""
    return [s.title for s in sections if any(isinstance(b, Note) and b.missing for b in s.blocks)]
