"""The report of an image run: retrieval and linear-probe results (trained, untrained, chance), a few validation
images with what the model made of them, and the data sections counting samples.

Reads the report's ``images`` part (``pretrain.evaluate.contrastive``: ``retrieval``, ``probe``, ``examples``);
any of it may be missing, and its section then says so.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pretrain.report import svg
from pretrain.report.sections import (
    Gallery,
    Note,
    Plot,
    Section,
    Table,
    _dict,
    _num,
    all_sources,
    curation,
    data_part,
    dates,
    drops,
    duplicates,
    funnel,
    ledger_section,
    mixture_section,
    pct,
    pipeline,
    sources,
    training,
)
from pretrain.report.summary import fmt

DATA_URI = re.compile(r"data:image/(?:png|jpeg|webp);base64,[A-Za-z0-9+/]+={0,2}")
RETRIEVAL_KEYS = (("i2t", 1), ("i2t", 5), ("t2i", 1), ("t2i", 5))
DIRECTION = {"i2t": "image -> text", "t2i": "text -> image"}


def images_part(report: Mapping[str, Any]) -> dict:
    return _dict(report.get("images"))


def safe_uri(uri: Any) -> str | None:
    """The URI when it is an inline image (base64 PNG/JPEG/WebP), else None: nothing else is embedded."""
    return uri if isinstance(uri, str) and DATA_URI.fullmatch(uri) else None


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "-"


def recall(r: Mapping[str, Any], model: str, direction: str | None, k: int) -> float | None:
    """A model's recall@k one way, or the mean of both ways (``direction`` None)."""
    row = _dict(r.get(model))
    if direction is not None:
        return _num(row.get(f"{direction}_recall_at_{k}"))
    both = [_num(row.get(f"{d}_recall_at_{k}")) for d in ("i2t", "t2i")]
    return None if None in both else sum(both) / 2  # type: ignore[arg-type]


def summary(report: Mapping[str, Any]) -> Section:
    s = Section("summary", "Summary")
    im = images_part(report)
    rows = [["recipe", fmt(report.get("recipe"))], ["objective", fmt(report.get("objective"))],
            ["model", fmt(im.get("model"))], ["image size (pixels)", fmt(im.get("image_size"))]]
    r, p = _dict(im.get("retrieval")), _dict(im.get("probe"))
    if r.get("trained"):
        chance = _num(_dict(r.get("chance")).get("recall_at_1"))
        rows.append(["retrieval recall@1 (mean of both ways): trained / untrained / chance",
                     f"{pct(recall(r, 'trained', None, 1))} / {pct(recall(r, 'untrained', None, 1))} / {pct(chance)}"])
    if p.get("trained"):
        rows.append(["linear probe accuracy: trained / untrained / chance",
                     f"{pct(_num(_dict(p['trained']).get('accuracy')))} / "
                     f"{pct(_num(_dict(p.get('untrained')).get('accuracy')))} / {pct(_num(p.get('chance')))}"])
    rows += [[f"train: {k}", fmt(v)] for k, v in _dict(report.get("train")).items()]
    s.blocks.append(Table(["", ""], rows))
    if not im:
        s.missing("image evaluation results")
    for note in report.get("notes") or []:  # what the evaluation skipped, and why
        s.blocks.append(Note(str(note)))
    return s


def retrieval_section(report: Mapping[str, Any]) -> Section | None:
    """Zero-shot retrieval; None for an image-only run (no captions: nothing to retrieve)."""
    im = images_part(report)
    if report.get("modality") == "image" or im.get("modality") == "image":
        return None
    s = Section("retrieval", "Zero-shot retrieval")
    r = _dict(im.get("retrieval"))
    if not r.get("trained"):
        return s.missing("retrieval results")
    s.blocks.append(Note(f"{fmt(r.get('pools'))} pool(s) of {fmt(r.get('pool'))} validation samples with distinct "
                         f"captions ({fmt(r.get('samples'))} samples; {fmt(r.get('distinct_captions'))} distinct "
                         "captions in the split). Recall@k: the share of queries whose partner ranks in the top k of "
                         "its pool (a tie counts as a miss); chance is k / pool."))
    chance = _dict(r.get("chance"))
    names = [f"{DIRECTION[d]} R@{k}" for d, k in RETRIEVAL_KEYS]
    values = {m: [recall(r, m, d, k) for d, k in RETRIEVAL_KEYS] for m in ("trained", "untrained")}
    values["chance"] = [_num(chance.get(f"recall_at_{k}")) for _, k in RETRIEVAL_KEYS]
    chart = svg.bar_chart(names, values, plot_id="plot-retrieval", title="Retrieval recall: trained vs untrained vs "
                          "chance", value_label="recall")
    if chart:
        s.blocks.append(Plot(chart, "Retrieval recall"))
    rows = []
    for d, k in RETRIEVAL_KEYS:
        t, u, c = recall(r, "trained", d, k), recall(r, "untrained", d, k), _num(chance.get(f"recall_at_{k}"))
        rows.append([DIRECTION[d], f"recall@{k}", pct(t), pct(u), pct(c), _ratio(t, c)])
    s.blocks.append(Table(["direction", "metric", "trained", "untrained", "chance", "trained / chance"], rows))
    return s


def probe_section(report: Mapping[str, Any]) -> Section:
    s = Section("probe", "Linear probe on frozen features")
    p = _dict(images_part(report).get("probe"))
    if p.get("skipped"):
        return s.missing(f"the linear probe ({p['skipped']})")
    if not p.get("trained"):
        return s.missing("linear probe results (evaluate.probe off, or not evaluated)")
    s.blocks.append(Note(f"A logistic regression on standardized frozen features of {fmt(p.get('train_samples'))} "
                         f"labelled train samples, scored on {fmt(p.get('val_samples'))} validation samples "
                         f"({fmt(p.get('classes'))} classes); chance is the largest class's share there. k-NN: a "
                         "weighted vote of the 20 nearest train features (cosine)."))
    chance = _num(p.get("chance"))
    metrics = (("accuracy", "linear probe"), ("knn_accuracy", "k-NN"))
    values = {m: [_num(_dict(p.get(m)).get(key)) for key, _ in metrics] for m in ("trained", "untrained")}
    values["chance"] = [chance] * len(metrics)
    chart = svg.bar_chart([label for _, label in metrics], values, plot_id="plot-probe",
                          title="Probe accuracy: trained vs untrained vs chance", value_label="accuracy")
    if chart:
        s.blocks.append(Plot(chart, "Probe accuracy"))
    rows = [[label, pct(values["trained"][i]), pct(values["untrained"][i]), pct(chance),
             _ratio(values["trained"][i], chance)] for i, (_, label) in enumerate(metrics)]
    s.blocks.append(Table(["", "trained", "untrained", "chance", "trained / chance"], rows))
    return s


def gallery(report: Mapping[str, Any]) -> Section:
    s = Section("samples", "Validation samples")
    im = images_part(report)
    items = [_dict(x) for x in im.get("examples") or [] if isinstance(x, Mapping)]
    if not items:
        return s.missing("example images")
    captions = im.get("modality") != "image"
    s.blocks.append(Note("Each validation image as the model saw it, with " +
                         ("its caption and the caption the trained model ranked first in its pool." if captions else
                          "its label and the trained linear probe's prediction.")))
    out = []
    for x in items:
        verdict = "right" if x.get("hit") else "wrong"
        lines = ([f"caption: {x.get('caption', '')}", f"model's pick ({verdict}): {x.get('retrieved', '')}"]
                 if captions else [f"label: {x.get('caption', '')}", f"probe ({verdict}): {x.get('retrieved', '')}"])
        out.append((safe_uri(x.get("image")) or "", lines))
    s.blocks.append(Gallery(out))
    return s


def data_facts_section(data: Mapping[str, Any]) -> Section:
    s = Section("data-samples", "Samples", 3)
    f = _dict(data.get("samples"))
    if not f:
        return s.missing("the samples manifest's counts")
    s.blocks.append(Table(["", ""], [["train samples", fmt(f.get("train_samples"))],
                                     ["validation samples", fmt(f.get("val_samples"))],
                                     ["left out: no caption", fmt(f.get("no_caption"))],
                                     ["labels (classes)", fmt(f.get("labels"))],
                                     ["stored image size (shorter side, pixels)", fmt(f.get("image_size"))]]))
    return s


def build_image(report: Mapping[str, Any]) -> list[Section]:
    """An image run's sections, in reading order: results, training, then how the data got there."""
    data, srcs = data_part(report), all_sources(report)
    out = [summary(report), training(report, optional=frozenset({"plot-mfu"}))]
    if (r := retrieval_section(report)) is not None:
        out.append(r)
    out += [probe_section(report), gallery(report), Section("data", "Data"), sources(data), data_facts_section(data),
            funnel(data, srcs, "samples"), drops(data, srcs, "samples"), duplicates(data)]
    if data.get("mixture"):
        out.append(mixture_section(report))
    out += [dates(data, srcs), curation(data), ledger_section(report)]
    if (steps := pipeline(report)) is not None:
        out.append(steps)
    return out
