"""The report: SVG charts put data where their axes say, both renderers show the same numbers, nothing is fetched
or executed, and a report missing any part still renders and says what it lacks."""

from __future__ import annotations

import copy
import json
import math
import re
import xml.etree.ElementTree as ET

import pytest

from pretrain.report import render_html, render_markdown, svg_curve
from pretrain.report.svg import bar_chart, fmt_tick, line_chart, nice_ticks

NS = {"s": "http://www.w3.org/2000/svg"}


def full_report() -> dict:
    """Every part the evaluate step fills, with round numbers to look for."""
    history = [{"step": 0, "val_loss": 8.0}]
    for step in range(10, 101, 10):
        history.append({"step": step, "loss": 8.0 - step / 20, "lr": 0.001 * step / 100, "tokens_per_second": 9000.0,
                        "mfu": 0.25, "grad_norm": 0.5, "step_seconds": 0.4})
    history += [{"step": 50, "val_loss": 6.0}, {"step": 100, "val_loss": 4.5}]
    return {
        "recipe": "tiny", "objective": "causal_lm",
        "metrics": {"overall": {"loss": 4.25, "perplexity": math.exp(4.25), "bits_per_byte": 1.75, "tokens": 2048.0},
                    "by_source": {"code": {"loss": 4.0, "perplexity": math.exp(4.0), "bits_per_byte": 1.5,
                                           "tokens": 1024.0},
                                  "web": {"loss": 4.5, "perplexity": math.exp(4.5), "bits_per_byte": 2.0,
                                          "tokens": 1024.0}}},
        "tasks": {"next_line": {"accuracy": 0.4375, "chance": 0.25, "items": 64, "metric": "acc",
                                "decontamination": {"ngram": 13, "checked": 70, "contaminated": 6, "removed": 6}}},
        "samples": [{"prompt": "def ", "completion": "f(): <b>|</b>\n```\n"}],
        "history": history,
        "train": {"steps": 100, "final_val_loss": 4.5, "initial_val_loss": 8.0, "world_size": 1, "device": "cpu"},
        "data": {
            "sources": {"code": {"documents": 90, "train_tokens": 40000, "val_tokens": 2000, "licenses": {"MIT": 90}},
                        "web": {"documents": 45, "train_tokens": 20000, "val_tokens": 1000,
                                "licenses": {"CC-BY": 40, "unknown": 5}}},
            "funnel": [{"stage": "read", "by_source": {"code": {"documents": 100, "bytes": None},
                                                       "web": {"documents": 60, "bytes": None}}},
                       {"stage": "kept by filters", "by_source": {"code": {"documents": 95, "bytes": 95000},
                                                                  "web": {"documents": 48, "bytes": 96000}}},
                       {"stage": "in token shards", "by_source": {"code": {"documents": 90, "bytes": 90000},
                                                                  "web": {"documents": 45, "bytes": 90000}}}],
            "drops": {"min_chars": {"documents": 5, "by_source": {"code": 5},
                                    "sample": {"source": "code", "id": "c1", "value": 12, "text": "x = 1 | y"}},
                      "toxic": {"documents": 12, "by_source": {"web": 12},
                                "sample": {"source": "web", "id": "w9", "value": 0.93,
                                           "text": "<script>alert(1)</script>"}}},
            "duplicate_clusters": [{"size": 3, "members": [{"source": "web", "id": f"w{i}", "text": "same page"}
                                                           for i in range(3)]}],
            "mixture": {"code": {"weight": 0.5, "available_tokens": 40000, "planned_tokens": 30000, "epochs": 0.75},
                        "web": {"weight": 0.5, "available_tokens": 20000, "planned_tokens": 30000, "epochs": 1.5}},
            "trained_tokens_by_source": {"code": 27000, "web": 33000},
            "curation": {"web": {"documents_in": 60, "toxic": 0.2, "low_quality": 0.05, "duplicate": 0.05,
                                 "other_dropped": 0.0, "pii_redactions": {"email": 7}}},
            "dates": {"knowledge_cutoff": "2023-04-01", "basis": "latest document date in the train split",
                      "by_source": {"web": {"dated": 40, "undated": 5, "earliest": "2020-01-01",
                                            "latest": "2023-04-01", "by_year": {"2020": 10, "2023": 30}}}},
        },
        "ledger": {"sources": {"web": {"read": 60, "written": 60, "skipped": {}, "kept": 48, "dropped": {"toxic": 12},
                                       "duplicates": 3, "deduplicated": 45, "balanced": True}},
                   "total": {"read": 60, "written": 60, "skipped": {}, "kept": 48, "dropped": {"toxic": 12},
                             "duplicates": 3, "deduplicated": 45, "balanced": True}},
    }


def svg_elements(page: str) -> dict[str, ET.Element]:
    """Every inline SVG of a page, parsed as XML (so each is well-formed), by id."""
    return {el.get("id"): el for el in (ET.fromstring(m) for m in re.findall(r"<svg .*?</svg>", page, re.S))}


def polyline(el: ET.Element, series: str) -> list[tuple[float, float]]:
    g = el.find(f".//s:g[@data-name='{series}']", NS)
    return [tuple(map(float, p.split(","))) for p in g.find("s:polyline", NS).get("points").split()]


def tick_positions(el: ET.Element, anchor: str) -> dict[str, float]:
    """Tick label -> its coordinate (x for the axis below, y for the axis at the left)."""
    out = {}
    for t in el.findall("s:text", NS):
        if t.get("text-anchor") == anchor and t.get("font-size") == "10":
            out[t.text] = float(t.get("x")) if anchor == "middle" else float(t.get("y")) - 4
    return out


# ---- charts ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("lo", "hi", "expected"), [(0, 8.3, [0, 2, 4, 6, 8, 10]), (4.1, 8.3, [4, 5, 6, 7, 8, 9]),
                                                    (0, 0.003, [0, 0.001, 0.002, 0.003]),
                                                    (9100, 9480, [9100, 9200, 9300, 9400, 9500])])
def test_nice_ticks_are_round_and_cover_the_range(lo, hi, expected):
    assert nice_ticks(lo, hi) == pytest.approx(expected)


def test_nice_ticks_of_a_constant_still_make_an_axis():
    ticks = nice_ticks(3.0, 3.0)
    assert len(ticks) >= 2 and ticks[0] < 3.0 < ticks[-1]
    assert nice_ticks(float("nan"), 1.0) == []


def test_tick_labels_are_short():
    assert [fmt_tick(v) for v in (0, 0.0025, 1500, 2_000_000, 3e9)] == ["0", "0.0025", "1.5k", "2M", "3G"]


def test_line_chart_puts_each_point_where_the_axes_say():
    chart = line_chart({"train": [(0, 2.0), (50, 4.0), (100, 6.0)], "validation": [(100, 3.0)]}, plot_id="p",
                       title="Loss", x_label="step", y_label="loss")
    el = ET.fromstring(chart)
    assert el.get("id") == "p" and el.get("class") == "plot"
    xs, ys = tick_positions(el, "middle"), tick_positions(el, "end")
    pts = polyline(el, "train")
    assert pts[0][0] == pytest.approx(xs["0"]) and pts[2][0] == pytest.approx(xs["100"], abs=0.1)
    assert pts[1][1] == pytest.approx(ys["4"], abs=0.1) and pts[2][1] == pytest.approx(ys["6"], abs=0.1)
    lone = el.find(".//s:g[@data-name='validation']/s:circle", NS)  # one point: a marker, not a line
    assert float(lone.get("cy")) == pytest.approx(ys["3"], abs=0.1)
    legend = [t.text for t in el.findall(".//s:g[@class='legend']/s:text", NS)]
    assert legend == ["train", "validation"]
    labels = {t.text for t in el.findall("s:text", NS)}
    assert {"Loss", "step", "loss"} <= labels


def test_line_chart_drops_non_finite_points_and_is_empty_without_any():
    chart = line_chart({"loss": [(0, 1.0), (1, float("nan")), (2, float("inf")), (3, 2.0), (4, None)]},
                       plot_id="p", title="t", x_label="x", y_label="y")
    assert len(polyline(ET.fromstring(chart), "loss")) == 2
    assert ET.fromstring(chart).find(".//s:g[@class='legend']", NS) is None  # one series: no legend
    assert line_chart({"loss": [(0, float("nan"))]}, plot_id="p", title="t", x_label="x", y_label="y") == ""
    assert line_chart({}, plot_id="p", title="t", x_label="x", y_label="y") == ""


def test_line_chart_thins_a_long_history_but_keeps_the_last_point():
    pts = [(float(i), float(i % 7)) for i in range(10_001)]
    got = polyline(ET.fromstring(line_chart({"s": pts}, plot_id="p", title="t", x_label="x", y_label="y")), "s")
    assert len(got) <= 2001 and got[-1][0] == pytest.approx(max(x for x, _ in got))


def bars(el: ET.Element) -> list[tuple[float, float, float, str]]:
    return [(float(r.get("x")), float(r.get("width")), float(r.get("y")), r.get("fill"))
            for r in el.findall("s:rect[@class='bar']", NS)]


def test_bar_lengths_are_proportional_to_values():
    el = ET.fromstring(bar_chart(["a", "b", "c"], {"n": [1.0, 2.0, 4.0]}, plot_id="b", title="t", value_label="n"))
    widths = [w for _, w, _, _ in bars(el)]
    assert widths[1] / widths[0] == pytest.approx(2.0, rel=1e-3) and widths[2] / widths[0] == pytest.approx(4.0,
                                                                                                            rel=1e-3)
    xs = tick_positions(el, "middle")
    x0, w = bars(el)[2][:2]
    assert x0 == pytest.approx(xs["0"]) and x0 + w == pytest.approx(xs["4"], abs=0.1)


def test_stacked_bars_are_contiguous_and_none_draws_nothing():
    el = ET.fromstring(bar_chart(["read", "kept"], {"code": [100, 90], "web": [50, None]}, plot_id="f", title="t",
                                 value_label="documents", stacked=True))
    b = bars(el)
    assert len(b) == 3  # web has no 'kept' bar
    (x_code, w_code, y_code, c_code), (x_web, w_web, y_web, c_web) = b[0], b[1]
    assert y_code == y_web and x_web == pytest.approx(x_code + w_code, abs=0.1) and c_code != c_web
    assert w_web / w_code == pytest.approx(0.5, rel=1e-3)
    assert bar_chart(["a"], {"n": [None]}, plot_id="x", title="t", value_label="n") == ""


def test_svg_curve_is_kept_for_older_callers():
    assert svg_curve([(0, 1.0)], "loss") == ""
    el = ET.fromstring(svg_curve([(0, 1.0), (10, 0.5)], "training loss"))
    assert el.get("id") == "plot-training-loss" and len(polyline(el, "training loss")) == 2


# ---- the report ------------------------------------------------------------------------------------------------

def test_html_is_self_contained_with_every_plot_and_no_script_to_run():
    page = render_html(full_report())
    plots = svg_elements(page)
    assert set(plots) == {"plot-loss", "plot-lr", "plot-throughput", "plot-mfu", "plot-heldout", "plot-tasks",
                          "plot-funnel-documents", "plot-funnel-bytes", "plot-drops", "plot-mixture", "plot-dates"}
    assert re.findall(r"\b(?:src|href|action)=\"(?!#)", page) == []  # only in-page anchors
    assert re.findall(r"url\(|@import|<link|<iframe|<img", page) == []
    assert re.findall(r"https?://(?!www\.w3\.org/2000/svg\")", page) == []  # the SVG namespace is a name, not a fetch
    assert page.count("<script") == 1 and '<script type="application/json" id="report">' in page
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "Not available" not in page


def test_embedded_json_cannot_end_its_element_and_holds_the_numbers():
    report = full_report()
    report["recipe"] = "x</script><script>alert(1)</script>"
    page = render_html(report)
    blob = re.search(r'<script type="application/json" id="report">(.*?)</script>', page, re.S).group(1)
    data = json.loads(blob)
    assert data["recipe"] == report["recipe"] and data["metrics"]["loss"] == 4.25
    assert data["by_source"]["web"]["bits_per_byte"] == 2.0 and data["tasks"]["next_line"]["items"] == 64
    assert page.count("<script") == 1


def test_plots_carry_the_report_numbers():
    plots = svg_elements(render_html(full_report()))
    loss = plots["plot-loss"]
    val = [float(c.get("cy")) for c in loss.findall(".//s:g[@data-name='validation']/s:circle", NS)]
    ys = tick_positions(loss, "end")
    assert val[0] == pytest.approx(ys["8"], abs=0.1) and val[2] == pytest.approx(ys["4.5"] if "4.5" in ys else
                                                                                 (ys["4"] + ys["5"]) / 2, abs=0.1)
    mfu = polyline(plots["plot-mfu"], "MFU")  # shown in percent
    assert mfu[0][1] == pytest.approx(tick_positions(plots["plot-mfu"], "end")["25"], abs=0.1)
    tasks = bars(plots["plot-tasks"])  # accuracy 0.4375 vs chance 0.25
    assert tasks[0][1] / tasks[1][1] == pytest.approx(0.4375 / 0.25, rel=1e-3)
    mixture = bars(plots["plot-mixture"])  # per source: planned, trained, available
    code = [w for _, w, y, _ in mixture if y < mixture[3][2]]
    assert code[1] / code[0] == pytest.approx(27000 / 30000, rel=1e-3)
    heldout = bars(plots["plot-heldout"])  # bits per byte when every source has it
    assert heldout[1][1] / heldout[0][1] == pytest.approx(2.0 / 1.5, rel=1e-3)
    dates = {t.text for t in plots["plot-dates"].findall(".//s:text", NS)}
    assert {"2020", "2021", "2022", "2023"} <= dates  # the years with no document are shown too


def test_a_source_keeps_its_colour_from_plot_to_plot():
    plots = svg_elements(render_html(full_report()))

    def legend(el: ET.Element) -> dict[str, str]:
        g = el.find(".//s:g[@class='legend']", NS)
        swatches = [r.get("fill") for r in g.findall("s:rect", NS)[1:]]
        return dict(zip([t.text for t in g.findall("s:text", NS)], swatches, strict=True))

    colours = [legend(plots[p]) for p in ("plot-funnel-documents", "plot-drops", "plot-dates")]
    assert colours[0] == colours[1] == colours[2] and colours[0]["code"] != colours[0]["web"]


def test_markdown_has_the_same_numbers_as_the_html():
    md = render_markdown(full_report())
    assert "| code | 4 | 54.6 | 1.5 | 1,024 |" in md and "| all | 4.25 | 70.11 | 1.75 | 2,048 |" in md
    assert "| next_line | 43.8% | 25.0% | +18.8 pts | 64 | acc | 13-gram: 70 checked, 6 contaminated, 6 removed |" in md
    assert "| code | 0.500 | 40,000 | 30,000 | 0.75 | 27,000 | 90.0% |" in md
    assert "| web | 60 | 20.0% | 5.0% | 5.0% | 0.0% | 7 |" not in md  # pii as 'email: 7'
    assert "| web | 60 | 20.0% | 5.0% | 5.0% | 0.0% | email: 7 |" in md
    assert "Knowledge cutoff: 2023-04-01 (latest document date in the train split)." in md
    assert "| kept by filters | web | 48 | 93.8 KiB | 80.0% |" in md
    assert "`x = 1 \\| y`" in md  # a pipe in a sample cannot break the table
    assert "| web | 60 | 60 | none | toxic 12 | 3 | 45 | yes |" in md and "adds up" in md
    assert "````\ndef f(): <b>|</b>\n```\n\n````" in md  # a fence in a sample gets a longer fence
    assert "Not available" not in md
    page = render_html(full_report())
    for text in ("43.8%", "27,000", "2023-04-01", "93.8 KiB", "email: 7"):
        assert text in page


def test_an_older_report_shape_still_renders():
    """The first evaluate step wrote flat metrics and the mixture at the top level."""
    old = {"recipe": "quickstart", "metrics": {"loss": 4.09, "perplexity": 59.86, "bits_per_byte": 1.86,
                                               "tokens": 32768.0},
           "samples": [], "train": {"steps": 300}, "history": [{"step": 0, "val_loss": 8.3}, {"step": 25, "loss": 6.5}],
           "steps": {"documents in": 595}, "ledger": None,
           "mixture": {"code": {"weight": 1.0, "available_tokens": 10, "planned_tokens": 10, "epochs": 1.0}},
           "trained_tokens_by_source": {"code": 12}}
    md = render_markdown(old)
    assert "| held-out loss | 4.09 |" in md and "| all | 4.09 | 59.86 | 1.86 | 32,768 |" in md
    assert "| code | 1.000 | 10 | 10 | 1.00 | 12 | 120.0% |" in md and "| documents in | 595 |" in md
    assert "plot-mixture" in render_html(old)


PARTS = ["metrics", "tasks", "samples", "history", "train", "data", "ledger", "recipe", "objective"]
DATA_PARTS = ["sources", "funnel", "drops", "duplicate_clusters", "mixture", "trained_tokens_by_source", "curation",
              "dates"]


@pytest.mark.parametrize("value", ["absent", None, "empty"])
@pytest.mark.parametrize("part", PARTS + [f"data.{p}" for p in DATA_PARTS])
def test_a_missing_part_says_not_available_and_never_crashes(part, value):
    report = copy.deepcopy(full_report())
    holder, key = (report["data"], part[5:]) if part.startswith("data.") else (report, part)
    if value == "absent":
        del holder[key]
    else:
        holder[key] = None if value is None else type(holder[key])()
    page, md = render_html(report), render_markdown(report)
    svg_elements(page)  # still well-formed
    informative = {"recipe", "objective", "train", "data.trained_tokens_by_source"}
    if part not in informative:
        assert "Not available" in page and "Not available" in md, part


def test_odd_values_inside_parts_do_not_crash():
    report = full_report()
    report["history"] += [{"step": 110, "loss": None}, {"loss": 1.0}, "not a row", {"step": 120, "mfu": float("nan")}]
    report["data"]["funnel"][0]["by_source"]["code"] = None
    report["data"]["drops"]["toxic"]["sample"] = None
    report["data"]["dates"]["by_source"]["web"]["by_year"] = {"unknown": 3}
    report["tasks"]["next_line"]["accuracy"] = None
    report["metrics"]["by_source"]["web"]["bits_per_byte"] = None  # -> the per-source plot falls back to loss
    page = render_html(report)
    heldout = bars(svg_elements(page)["plot-heldout"])
    assert heldout[1][1] / heldout[0][1] == pytest.approx(4.5 / 4.0, rel=1e-3)
    assert render_markdown(report).count("| next_line | - | 25.0% | - |") == 1


def test_an_empty_report_renders_both_ways():
    page, md = render_html({}), render_markdown({})
    assert svg_elements(page) == {} and page.count("Not available") > 5
    assert md.startswith("# Evaluation: ?") and "_Not available in this report:" in md
