"""The evaluation report opened in a real headless Chromium: no console errors, no network request, and every
plot really drawn (its area in a screenshot is not blank and shows its series' colours).

Needs Debian's ``chromium`` (/usr/bin/chromium) and the ``playwright`` package (it drives that binary; no browser
download). Skipped when either is missing, except with CI=true, where .ci/run installs chromium and a skip would
hide a broken report.
"""

from __future__ import annotations

import io
import math
import os
import shutil
from pathlib import Path

import pytest
from needs import missing

from pretrain.report import render_html
from pretrain.report.svg import PALETTE

CHROMIUM = os.environ.get("PRETRAIN_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
PLOTS = {"plot-loss", "plot-lr", "plot-throughput", "plot-mfu", "plot-heldout", "plot-tasks", "plot-funnel-documents",
         "plot-funnel-bytes", "plot-drops", "plot-mixture", "plot-dates"}


def _needs(reason: str) -> None:
    missing(reason, ".ci/run installs Debian's chromium; playwright is in the dev extra")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    try:
        import PIL  # noqa: F401  (reads the screenshots)
        from playwright.sync_api import sync_playwright
    except ImportError as err:
        _needs(f"{err.name} is not installed (the dev extra has playwright, which drives Debian's chromium, "
               "and pillow)")
    if not Path(CHROMIUM).exists():
        _needs("chromium is not installed (Debian/Ubuntu: apt-get install chromium)")
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as p:  # a persistent context: a fresh --user-data-dir of our own
        context = p.chromium.launch_persistent_context(str(profile), executable_path=CHROMIUM, headless=True,
                                                       args=FLAGS, viewport={"width": 1100, "height": 900})
        yield context
        context.close()


def realistic_report() -> dict:
    """A report shaped like a quickstart run's (numbers of that size), with every part the evaluate step fills."""
    history: list[dict] = []
    for step in range(0, 301, 10):
        if step % 50 == 0:
            history.append({"step": step, "val_loss": 4.0 + 4.3 * math.exp(-step / 60), "val_perplexity": 0.0})
        if step:
            warm = min(1.0, step / 30)
            history.append({"step": step, "loss": 4.3 + 4.0 * math.exp(-step / 55) + 0.08 * math.sin(step),
                            "lr": 3e-3 * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / 300))),
                            "grad_norm": 0.4 + 0.1 * math.cos(step), "step_seconds": 0.44,
                            "tokens_per_second": 9300 + 150 * math.sin(step / 7), "mfu": 0.31 + 0.02 * math.sin(step)})
    sources = ["pydoc-web", "stdlib-code", "wiki"]
    by_source = {s: {"loss": 3.9 + i * 0.4, "perplexity": math.exp(3.9 + i * 0.4), "bits_per_byte": 1.7 + i * 0.2,
                     "tokens": 8192.0 + i * 4096} for i, s in enumerate(sources)}
    decon = {"ngram": 13, "checked": 240, "contaminated": 6, "removed": 6}
    funnel = []
    for stage, keep in (("read", 1.0), ("ingested", 0.98), ("kept by filters", 0.9), ("after dedup", 0.86),
                        ("in token shards", 0.86)):
        funnel.append({"stage": stage, "by_source": {
            s: {"documents": int(n * keep), "bytes": int(n * keep * b) if stage != "read" else None}
            for s, n, b in (("pydoc-web", 150, 9000), ("stdlib-code", 452, 20000), ("wiki", 120, 4000))}})
    return {
        "recipe": "quickstart", "objective": "causal_lm",
        "metrics": {"overall": {"loss": 4.09, "perplexity": math.exp(4.09), "bits_per_byte": 1.86, "tokens": 32768.0},
                    "by_source": by_source},
        "tasks": {"next_line": {"accuracy": 0.41, "chance": 0.25, "items": 234, "metric": "acc",
                                "decontamination": decon},
                  "next_sentence": {"accuracy": 0.3, "chance": 0.25, "items": 180, "metric": "acc",
                                    "decontamination": {**decon, "checked": 186}}},
        "samples": [{"prompt": "def ", "completion": "main():\n    return 0\n"},
                    {"prompt": "The ", "completion": "module <provides> & \"quotes\" </script>"}],
        "history": history,
        "train": {"steps": 300, "final_val_loss": 4.07, "initial_val_loss": 8.34, "world_size": 2, "device": "cpu",
                  "parameters": 2557632},
        "data": {
            "sources": {s: {"documents": 100 + i, "train_tokens": 1_000_000 * (i + 1), "val_tokens": 40_000,
                            "licenses": {"PSF-2.0": 100 + i}} for i, s in enumerate(sources)},
            "funnel": funnel,
            "drops": {"min_chars": {"documents": 17, "by_source": {"stdlib-code": 16, "pydoc-web": 1},
                                    "sample": {"source": "stdlib-code", "id": "bb5c79a4", "value": 124,
                                               "text": '"""Logging configuration."""\n\nimport logging\n'}},
                      "gopher_quality.min_alpha_words_ratio": {
                          "documents": 3, "by_source": {"pydoc-web": 3},
                          "sample": {"source": "pydoc-web", "id": "9f1e", "value": 0.61,
                                     "text": "<script>console.error('injected')</script> x = [1, 2]"}},
                      "toxic": {"documents": 2, "by_source": {"wiki": 2}, "sample": None}},
            "duplicate_clusters": [{"size": 4, "members": [
                {"source": "pydoc-web", "id": f"d{i}", "text": "Help on module abc:\n\nNAME\n    abc"}
                for i in range(4)]}, {"size": 2, "members": [{"source": "wiki", "id": "w1", "text": "Paris"},
                                                               {"source": "wiki", "id": "w2", "text": "Paris."}]}],
            "mixture": {s: {"weight": w, "available_tokens": a, "planned_tokens": int(w * 3_100_000),
                            "epochs": w * 3_100_000 / a}
                        for s, w, a in (("pydoc-web", 0.2, 600_000), ("stdlib-code", 0.6, 2_000_000),
                                        ("wiki", 0.2, 500_000))},
            "trained_tokens_by_source": {"pydoc-web": 590_000, "stdlib-code": 1_900_000, "wiki": 640_000},
            "curation": {s: {"documents_in": 150, "toxic": 0.01 * i, "low_quality": 0.05, "duplicate": 0.1,
                             "other_dropped": 0.0, "pii_redactions": {"email": 3 * i}} for i, s in enumerate(sources)},
            "dates": {"knowledge_cutoff": "2024-06-30", "basis": "latest document date in the train split",
                      "by_source": {"wiki": {"dated": 110, "undated": 10, "earliest": "2019-02-01",
                                             "latest": "2024-06-30",
                                             "by_year": {"2019": 10, "2021": 30, "2023": 40, "2024": 30}},
                                    "stdlib-code": {"dated": 0, "undated": 452, "earliest": None, "latest": None,
                                                    "by_year": {}},
                                    "pydoc-web": {"dated": 150, "undated": 0, "earliest": "2023-10-02",
                                                  "latest": "2023-10-02", "by_year": {"2023": 150}}}},
        },
        "ledger": {"sources": {"pydoc-web": {"read": 150, "written": 150, "skipped": {}, "kept": 142,
                                             "dropped": {"min_chars": 1}, "duplicates": 15, "deduplicated": 127,
                                             "balanced": True}},
                   "total": {"read": 150, "written": 150, "skipped": {}, "kept": 142, "dropped": {"min_chars": 1},
                             "duplicates": 15, "deduplicated": 127, "balanced": True}},
    }


def open_report(context, html_text: str, path: Path):
    """Load the page from a file; return (page, console errors and page errors, requests other than the page)."""
    path.write_text(html_text)
    page = context.new_page()
    errors: list[str] = []
    requests: list[str] = []
    page.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.on("request", lambda r: requests.append(r.url) if r.url != path.as_uri() else None)
    page.goto(path.as_uri(), wait_until="load")
    return page, errors, requests


def plot_pixels(page) -> dict[str, dict[str, float]]:
    """Per ``svg.plot``: its share of non-white pixels, its number of distinct colours, and its share of pixels in
    each palette colour, measured on a full-page screenshot cropped to the plot's bounding box."""
    from PIL import Image

    shot = Image.open(io.BytesIO(page.screenshot(full_page=True))).convert("RGB")
    out = {}
    for el in page.query_selector_all("svg.plot"):
        box = el.bounding_box()
        assert box and box["width"] > 50 and box["height"] > 50, (el.get_attribute("id"), box)
        inset = 2  # inside the CSS border: the plot itself, not its frame
        crop = shot.crop((int(box["x"]) + inset, int(box["y"]) + inset, int(box["x"] + box["width"]) - inset,
                          int(box["y"] + box["height"]) - inset))
        total = crop.width * crop.height
        counts = {px: n for n, px in crop.getcolors(total)}
        palette = {c: sum(n for px, n in counts.items() if max(abs(a - b) for a, b in zip(px, rgb, strict=True)) < 12)
                   / total for c, rgb in ((c, tuple(int(c[i:i + 2], 16) for i in (1, 3, 5))) for c in PALETTE)}
        out[el.get_attribute("id")] = {"ink": 1 - counts.get((255, 255, 255), 0) / total,
                                       "colours": len([px for px, n in counts.items() if n >= 3]), **palette}
    return out


def test_full_report_renders_every_plot_with_no_console_error_and_no_request(browser, tmp_path):
    page, errors, requests = open_report(browser, render_html(realistic_report()), tmp_path / "report.html")
    assert errors == []
    assert requests == []  # self-contained: no font, image, script or style fetched
    stats = plot_pixels(page)
    assert set(stats) == PLOTS
    # the series each plot must show in its palette colour (sources sorted: pydoc-web, stdlib-code, wiki; the
    # stdlib has no dates, so the dates plot shows only the first and third)
    series = {"plot-loss": 2, "plot-tasks": 2, "plot-mixture": 3, "plot-funnel-documents": 3,
              "plot-funnel-bytes": 3, "plot-drops": 3}
    for plot_id, s in stats.items():
        assert s["ink"] > 0.04, (plot_id, s)  # axes, ticks, labels and data are drawn, not just a frame
        assert s["colours"] >= 100, (plot_id, s)  # anti-aliased text and lines, not a flat fill
        for i in range(series.get(plot_id, 1)):
            assert s[PALETTE[i]] > 0.003, (plot_id, i, s)
    assert stats["plot-dates"][PALETTE[2]] > 0.003 and stats["plot-dates"][PALETTE[1]] < 0.002
    # the injected <script> in a drop sample is shown as text, never run (no console error above), and the page's
    # text says what the data says
    body = page.inner_text("body")
    assert "<script>console.error('injected')</script>" in body
    assert "Knowledge cutoff: 2024-06-30" in body and "41.0%" in body
    page.close()


def test_the_pixel_check_catches_a_blank_plot(browser, tmp_path):
    html_text = render_html(realistic_report()).replace(
        "</body>", '<svg class="plot" id="blank" width="300" height="120"><rect width="300" height="120" '
                   'fill="#fff"/></svg></body>')
    page, errors, _ = open_report(browser, html_text, tmp_path / "blank.html")
    stats = plot_pixels(page)
    assert errors == [] and stats["blank"]["ink"] < 0.001 and stats["blank"]["colours"] <= 1
    page.close()


@pytest.mark.parametrize("report", [{}, {"recipe": "r", "metrics": {"loss": 2.0, "perplexity": 7.39,
                                                                     "bits_per_byte": None, "tokens": 10.0},
                                         "samples": [], "history": [{"step": 0, "val_loss": 2.5}]}],
                         ids=["empty", "partial"])
def test_a_partial_report_opens_cleanly_and_says_what_is_missing(browser, tmp_path, report):
    page, errors, requests = open_report(browser, render_html(report), tmp_path / "partial.html")
    assert errors == [] and requests == []
    assert "Not available" in page.inner_text("body")
    stats = plot_pixels(page)
    assert set(stats) == ({"plot-loss"} if report else set())  # one validation point is still a plot
    for plot_id, s in stats.items():
        assert s["ink"] > 0.02 and s[PALETTE[0]] > 0.00004, (plot_id, s)  # ~7 px: the point
    page.close()
