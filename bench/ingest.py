"""Ingest throughput per core: pretrain's readers vs datatrove 0.10, side by side in the same run.

Runs with no arguments. Builds its inputs in a temp dir: one gzip WARC of only HTML 200 response
records (labelled pages whose main text is known, wrapped in menus, sidebars, cookie banners and
footers, plus real pydoc pages of stdlib modules), then times pretrain's WARC reader (FastWARC +
Resiliparse main content) against datatrove's ``WarcReader`` + ``Trafilatura`` at their defaults,
alternating sides for ``--warc-rounds`` rounds (``--rounds`` for the other figures), one process per
side pinned to one core; figures are medians. Text quality comes from the first round: recall of
each labelled page's main text (multiset of lowercased words), boilerplate leakage, characters kept
per page. Then MB/s per core of the WET, Wikipedia, code and JSONL/Parquet readers (each against
its I/O floor where there is one), and our peak RSS on a small input next to a large one (memory
must stay flat). A reader that is missing or broken is reported as null with a note, never a failure.

The LAST line printed is one JSON object; ``vs_datatrove`` (our docs/s over datatrove's) comes first.
Needs the ``bench`` extra (``pip install -e .[bench]``): datatrove with its ``io`` extra (WarcReader
imports ``cchardet`` and ``magic``) and ``processing`` extra (trafilatura).
"""

from __future__ import annotations

import argparse
import bz2
import collections
import gzip
import importlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
WORKER = BENCH / "ingest_worker.py"
MB = 1e6
TARGET = 30.0  # the goal: our docs/s at least this many times datatrove's
LEAK_PHRASES = ("section 3 overview", "related reading number", "accept all cookies", "all rights reserved",
                "privacy policy")
_WORD = re.compile(r"\w+")
LABELLED_PREFIX = "https://docs.example.org/reference/"  # the labelled pages' URLs (samples.web)


def log(message: str) -> None:
    print(f"[ingest-bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


ANCHOR_MODULES = ("datatrove", "trafilatura", "warcio", "cchardet", "magic")
ANCHOR = ("datatrove 0.10 WarcReader + Trafilatura at their defaults (favour_precision, deduplicate, 1 s timeout "
          "per page in its sandbox process); its pipeline and sandbox processes pinned to the same core as ours")

# ---------------------------------------------------------------------------------------------------- workers

def check_anchor() -> None:
    """Fail early and clearly when the anchor cannot run (WarcReader imports cchardet and magic per record)."""
    missing = []
    for name in ANCHOR_MODULES:
        try:
            importlib.import_module(name)
        except Exception as err:  # ImportError, or a dependency's own import failing (lxml.html.clean)
            missing.append(f"{name} ({type(err).__name__}: {err})")
    if missing:
        raise SystemExit("the datatrove anchor cannot run, missing: " + "; ".join(missing)
                         + ". Install the bench extra: pip install -e '.[bench]' (datatrove[io,processing]).")


def worker(side: str, location: str, cpu: int, *, fmt: str = "warc", options: dict[str, Any] | None = None,
           min_seconds: float = 0.0, texts_out: str | None = None, split_prefix: str | None = None,
           timeout: float = 900) -> dict[str, Any]:
    """One side in a fresh process (clean imports, clean peak RSS); its JSON line."""
    cmd = [sys.executable, str(WORKER), side, "--input", location, "--format", fmt, "--cpu", str(cpu),
           "--min-seconds", str(min_seconds)]
    cmd += [f"--option={k}={json.dumps(v)}" for k, v in (options or {}).items()]
    if texts_out:
        cmd += ["--texts-out", texts_out]
    if split_prefix:
        cmd += ["--split-prefix", split_prefix]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{side} worker failed ({proc.returncode}): {proc.stderr.strip()[-1500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def alternate(sides: list[tuple[str, Callable[[int], dict[str, Any]]]], rounds: int,
              describe: Callable[[str, dict[str, Any]], str]) -> dict[str, list[dict[str, Any]]]:
    """Each side once per round, the order flipped every round so drift hits both sides alike."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in sides}
    for r in range(rounds):
        for name, run in sides if r % 2 == 0 else sides[::-1]:
            result = run(r)
            runs[name].append(result)
            log(f"round {r + 1}/{rounds} {name}: {describe(name, result)}")
    return runs


def median(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


# ---------------------------------------------------------------------------------------------------- inputs

def gzip_members(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(start, end, inflated bytes) of each gzip member of a per-record gzip WARC."""
    view, pos = memoryview(data), 0
    while pos < len(data):
        inflater, out, fed = zlib.decompressobj(31), [], pos
        while not inflater.eof:
            chunk = view[fed:fed + (1 << 16)]
            if not chunk:
                raise ValueError(f"truncated gzip member at byte {pos}")
            out.append(inflater.decompress(chunk))
            fed += len(chunk)
        end = fed - len(inflater.unused_data)
        yield pos, end, b"".join(out)
        pos = end


def html_response(record: bytes) -> tuple[str, int] | None:
    """(target URL, HTML payload bytes) of an HTML 200 response record; None for any other record."""
    head, _, rest = record.partition(b"\r\n\r\n")
    fields = dict(line.split(b":", 1) for line in head.split(b"\r\n")[1:] if b":" in line)
    fields = {k.strip().lower(): v.strip() for k, v in fields.items()}
    if fields.get(b"warc-type") != b"response":
        return None
    block = rest[:int(fields[b"content-length"])]
    http_head, _, payload = block.partition(b"\r\n\r\n")
    lines = http_head.split(b"\r\n")
    status = lines[0].split()[1] if len(lines[0].split()) > 1 else b""
    ctype = next((v.strip().lower() for k, v in (x.split(b":", 1) for x in lines[1:] if b":" in x)
                  if k.strip().lower() == b"content-type"), b"")
    if status != b"200" or not ctype.startswith((b"text/html", b"application/xhtml+xml")):
        return None
    return fields[b"warc-target-uri"].decode(), len(payload)


def build_html_warc(tmp: Path, pages: int, pydoc_pages: int) -> dict[str, Any]:
    """One per-record gzip WARC of only HTML 200 responses: labelled pages, then real pydoc pages."""
    from pretrain.data import corpus
    from pretrain.data.samples.web import write_warc

    labels = write_warc(tmp / "labelled.warc.gz", pages, junk=False)
    sources = [tmp / "labelled.warc.gz"]
    if pydoc_pages:
        log(f"rendering {pydoc_pages} pydoc pages into a WARC (real pages; no labels)")
        sources += [Path(u) for u in corpus.write_pydoc_warcs(str(tmp / "pydoc"), pydoc_pages, 1)]
    out = tmp / "html" / "html.warc.gz"
    out.parent.mkdir()
    urls, html_bytes, removed = [], 0, 0
    with open(out, "wb") as f:
        for source in sources:
            data = source.read_bytes()
            for start, end, record in gzip_members(data):
                found = html_response(record)
                if found is None:
                    removed += 1
                    continue
                f.write(data[start:end])
                urls.append(found[0])
                html_bytes += found[1]
    return {"path": str(out), "labels": labels, "urls": urls, "html_bytes": html_bytes, "removed": removed,
            "file_bytes": out.stat().st_size}


def inflated_size(path: Path) -> int:
    opener = {".gz": gzip.open, ".bz2": bz2.open}.get(path.suffix, open)
    total = 0
    with opener(path, "rb") as f:
        while chunk := f.read(1 << 20):
            total += len(chunk)
    return total


def tree_size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def repeat_file(source: Path, dest: Path, target_bytes: int) -> int:
    """``dest`` made of whole copies of ``source`` up to about ``target_bytes`` (records repeat: fine for RSS)."""
    data = source.read_bytes()
    copies = max(1, round(target_bytes / len(data)))
    with open(dest, "wb") as f:
        for _ in range(copies):
            f.write(data)
    return dest.stat().st_size


# ---------------------------------------------------------------------------------------------------- quality

def words(text: str) -> collections.Counter:
    return collections.Counter(_WORD.findall(text.lower()))


def recall(label: str, text: str) -> float:
    """Share of the label's words (as a multiset) that the extracted text holds."""
    want = words(label)
    got = words(text)
    return sum(min(n, got[w]) for w, n in want.items()) / max(1, sum(want.values()))


def quality(texts_path: Path, html: dict[str, Any]) -> dict[str, float]:
    """Recall, boilerplate leakage and characters kept, from one side's (url, text) lines."""
    texts: dict[str, str] = {}
    with open(texts_path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            texts[row["url"]] = row["text"]
    labels: dict[str, str] = html["labels"]
    others = [u for u in html["urls"] if u not in labels]
    leaked = [any(p in texts.get(u, "").lower() for p in LEAK_PHRASES) for u in labels]
    return {
        "recall": statistics.mean(recall(t, texts.get(u, "")) for u, t in labels.items()),
        "leakage": sum(leaked) / max(1, len(leaked)),
        "chars_per_page": sum(len(texts.get(u, "")) for u in html["urls"]) / max(1, len(html["urls"])),
        "chars_per_labelled_page": sum(len(texts.get(u, "")) for u in labels) / max(1, len(labels)),
        "chars_per_pydoc_page": sum(len(texts.get(u, "")) for u in others) / max(1, len(others)),
        "label_chars_per_page": sum(len(t) for t in labels.values()) / max(1, len(labels)),
    }


# ---------------------------------------------------------------------------------------------------- sections

def warc_vs_datatrove(args: argparse.Namespace, tmp: Path, html: dict[str, Any]) -> dict[str, Any]:
    """The headline: HTML WARC -> main text, ours vs datatrove, same file, alternating rounds."""
    n, path = len(html["urls"]), html["path"]
    texts = {side: tmp / f"texts-{side}.jsonl" for side in ("ours", "datatrove")}

    def run(side: str, min_seconds: float) -> Callable[[int], dict[str, Any]]:
        return lambda r: worker(side, path, args.cpu, min_seconds=min_seconds, split_prefix=LABELLED_PREFIX,
                                texts_out=str(texts[side]) if r == 0 else None)

    runs = alternate([("ours", run("ours", args.min_seconds)), ("datatrove", run("datatrove", 0.0))], args.warc_rounds,
                     lambda name, res: f"{n / res['seconds']:.1f} docs/s, {res['docs_out']} docs out, "
                                       f"peak RSS {res['peak_rss_mb']:.0f} MB ({res['passes']} passes)")
    ours_s, dt_s = median(runs["ours"], "seconds"), median(runs["datatrove"], "seconds")
    q_ours, q_dt = quality(texts["ours"], html), quality(texts["datatrove"], html)
    ours_runs, dt_runs = runs["ours"], runs["datatrove"]
    return {
        "vs_datatrove": round(dt_s / ours_s, 2),  # median datatrove seconds / median ours, same file
        "docs_per_s": round(n / ours_s, 1),
        "datatrove_docs_per_s": round(n / dt_s, 2),
        "recall": round(q_ours["recall"], 4),
        "datatrove_recall": round(q_dt["recall"], 4),
        "html_mb_per_s": round(html["html_bytes"] / MB / ours_s, 2),
        "datatrove_html_mb_per_s": round(html["html_bytes"] / MB / dt_s, 3),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in ours_runs),
        "datatrove_peak_rss_mb": max(r["peak_rss_mb"] for r in dt_runs),
        "datatrove_extractor_peak_rss_mb": max(r["children_peak_rss_mb"] for r in dt_runs),
        "chars_per_page": round(q_ours["chars_per_page"]),
        "datatrove_chars_per_page": round(q_dt["chars_per_page"]),
        "chars_per_labelled_page": round(q_ours["chars_per_labelled_page"]),
        "datatrove_chars_per_labelled_page": round(q_dt["chars_per_labelled_page"]),
        "label_chars_per_page": round(q_ours["label_chars_per_page"]),
        "chars_per_pydoc_page": round(q_ours["chars_per_pydoc_page"]),
        "datatrove_chars_per_pydoc_page": round(q_dt["chars_per_pydoc_page"]),
        "leakage": round(q_ours["leakage"], 4),
        "datatrove_leakage": round(q_dt["leakage"], 4),
        "docs_out": ours_runs[0]["docs_out"],
        "datatrove_docs_out": dt_runs[0]["docs_out"],
        "datatrove_timeouts": dt_runs[0].get("timeout", 0),
        "ledger_ok": all(r.get("ledger_ok", False) for r in ours_runs),
        "meets_target": dt_s / ours_s >= TARGET and q_ours["recall"] >= q_dt["recall"],
        "html_records": n,
        "labelled_pages": len(html["labels"]),
        **by_page_kind(runs, len(html["labels"]), n - len(html["labels"])),
        "vs_datatrove_per_round": [round(d["seconds"] / o["seconds"], 1)
                                   for o, d in zip(ours_runs, dt_runs, strict=True)],
        "warc_seconds_per_pass": {"ours": [round(r["seconds"], 4) for r in ours_runs],
                                  "datatrove": [round(r["seconds"], 3) for r in dt_runs]},
    }


def by_page_kind(runs: dict[str, list[dict[str, Any]]], labelled: int, pydoc: int) -> dict[str, Any]:
    """docs/s on the small labelled pages and on the real pydoc pages apart (time between yielded documents)."""
    out: dict[str, Any] = {}
    for kind, group, count in (("labelled", "prefix", labelled), ("pydoc", "other", pydoc)):
        if not count:
            continue
        ours = median([r["split_seconds"] for r in runs["ours"]], group)
        theirs = median([r["split_seconds"] for r in runs["datatrove"]], group)
        out[f"vs_datatrove_{kind}_pages"] = round(theirs / ours, 2)
        out[f"docs_per_s_{kind}_pages"] = round(count / ours, 1)
        out[f"datatrove_docs_per_s_{kind}_pages"] = round(count / theirs, 2)
    return out


def wet_figures(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """WET (already text): our MB/s per core against datatrove's WarcReader on the same file."""
    from pretrain.data.samples.web import write_wet

    path = tmp / "wet" / "sample.warc.wet.gz"
    write_wet(path, args.wet_pages)
    raw = inflated_size(path)
    runs = alternate([("ours-wet", lambda r: worker("ours", str(path), args.cpu, fmt="wet",
                                                    min_seconds=args.min_seconds)),
                      ("datatrove-wet", lambda r: worker("datatrove-wet", str(path), args.cpu))], args.rounds,
                     lambda name, res: f"{raw / MB / res['seconds']:.1f} MB/s, {res['docs_out']} docs")
    ours_s, dt_s = median(runs["ours-wet"], "seconds"), median(runs["datatrove-wet"], "seconds")
    return {"wet_mb_per_s": round(raw / MB / ours_s, 1), "datatrove_wet_mb_per_s": round(raw / MB / dt_s, 1),
            "wet_vs_datatrove": round(dt_s / ours_s, 2), "wet_input_mb": round(raw / MB, 1)}


def reader_figure(args: argparse.Namespace, name: str, fmt: str, location: Path, size: int,
                  anchor: str | None = None) -> dict[str, Any]:
    """MB/s per core of one reader through plan + read; against its I/O floor when it has one."""
    sides: list[tuple[str, Callable[[int], dict[str, Any]]]] = [
        (name, lambda r: worker("ours", str(location), args.cpu, fmt=fmt, min_seconds=args.min_seconds))]
    if anchor:
        sides.append((anchor, lambda r: worker(anchor, str(location), args.cpu, min_seconds=args.min_seconds)))
    runs = alternate(sides, args.rounds,
                     lambda side, res: f"{size / MB / res['seconds']:.1f} MB/s, {res['docs_out']} docs")
    if not all(r.get("ledger_ok", False) for r in runs[name]):
        raise RuntimeError(f"{name}: records != documents + skipped")
    if not runs[name][0]["docs_out"]:
        raise RuntimeError(f"{name}: no documents read")
    ours_s = median(runs[name], "seconds")
    out = {f"{name}_mb_per_s": round(size / MB / ours_s, 1), f"{name}_input_mb": round(size / MB, 1)}
    if anchor:
        floor = median(runs[anchor], "seconds")
        out[f"{name}_vs_{anchor.replace('-', '_')}"] = round(floor / ours_s, 3)
        out[f"{anchor.replace('-', '_')}_mb_per_s"] = round(size / MB / floor, 1)
    return out


def guarded(name: str, notes: dict[str, str], keys: list[str], build: Callable[[], dict[str, Any]]) -> dict:
    """A figure of a reader that may be missing or broken: null plus a note instead of a failure."""
    try:
        return build()
    except Exception as err:  # a reader another helper is still writing must not sink the benchmark
        notes[name] = f"{type(err).__name__}: {str(err)[-300:]}"
        log(f"{name}: skipped ({notes[name]})")
        return dict.fromkeys(keys)


def other_readers(args: argparse.Namespace, tmp: Path, notes: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def wikipedia() -> dict[str, Any]:
        from pretrain.data.samples.wikipedia import write_wikipedia_dump

        path = tmp / "wiki" / "enwiki-pages-articles-multistream.xml.bz2"
        path.parent.mkdir()
        write_wikipedia_dump(str(path), args.wiki_pages, multistream=True)
        xml = inflated_size(path)
        fig = reader_figure(args, "wikipedia", "wikipedia", path, xml)
        fig["wikipedia_bz2_mb_per_s"] = round(fig["wikipedia_mb_per_s"] * path.stat().st_size / xml, 2)
        return fig

    def code() -> dict[str, Any]:
        from pretrain.data.samples.code import write_large_repo

        path = Path(write_large_repo(tmp / "code", megabytes=args.code_mb))
        return reader_figure(args, "code", "code", path, tree_size(path))

    def jsonl() -> dict[str, Any]:
        from pretrain.data.samples.tables import write_jsonl

        path = Path(write_jsonl(tmp / "tables" / "rows.jsonl", args.table_rows))
        return reader_figure(args, "jsonl", "jsonl", path, path.stat().st_size, anchor="jsonl-anchor")

    def parquet() -> dict[str, Any]:
        from pretrain.data.samples.tables import write_parquet

        path = Path(write_parquet(tmp / "tables" / "rows.parquet", args.table_rows))
        return reader_figure(args, "parquet", "parquet", path, path.stat().st_size, anchor="parquet-anchor")

    out |= guarded("wikipedia", notes, ["wikipedia_mb_per_s", "wikipedia_bz2_mb_per_s"], wikipedia)
    out |= guarded("code", notes, ["code_mb_per_s"], code)
    out |= guarded("jsonl", notes, ["jsonl_mb_per_s", "jsonl_vs_jsonl_anchor"], jsonl)
    out |= guarded("parquet", notes, ["parquet_mb_per_s", "parquet_vs_parquet_anchor"], parquet)
    return out


def size_label(nbytes: float) -> str:
    return f"{round(nbytes / 1e9, 1):g}gb" if nbytes >= 0.95e9 else f"{round(nbytes / MB)}mb"


def flat_memory(args: argparse.Namespace, tmp: Path, html: dict[str, Any], small_rss: float,
                notes: dict[str, str], jsonl_ok: bool) -> dict[str, Any]:
    """Our peak RSS on a large input next to a small one: streaming keeps it flat."""
    out: dict[str, Any] = {}
    if args.rss_warc_mb > 0:
        big = tmp / "big" / "big.warc.gz"
        big.parent.mkdir(exist_ok=True)
        size = repeat_file(Path(html["path"]), big, int(args.rss_warc_mb * MB))
        log(f"peak RSS: our WARC reader on {size / MB:.0f} MB of gzip WARC ({html['file_bytes'] / MB:.1f} MB small)")
        res = worker("ours", str(big), args.cpu)
        big.unlink()
        out[f"peak_rss_mb_warc_{size_label(size)}"] = res["peak_rss_mb"]
        out["peak_rss_mb_warc_small"] = small_rss
        out[f"warc_{size_label(size)}_docs_per_s"] = round(res["docs_out"] / res["seconds"], 1)
    if args.rss_gb > 0 and jsonl_ok:
        def jsonl_rss() -> dict[str, Any]:
            small = tmp / "tables" / "rows.jsonl"
            big = tmp / "big" / "big.jsonl"
            big.parent.mkdir(exist_ok=True)
            size = repeat_file(small, big, int(args.rss_gb * 1e9))
            log(f"peak RSS: our JSONL reader on {size / 1e9:.2f} GB ({small.stat().st_size / MB:.0f} MB small)")
            small_res = worker("ours", str(small), args.cpu, fmt="jsonl")
            big_res = worker("ours", str(big), args.cpu, fmt="jsonl")
            big.unlink()
            return {f"peak_rss_mb_jsonl_{size_label(size)}": big_res["peak_rss_mb"],
                    "peak_rss_mb_jsonl_small": small_res["peak_rss_mb"],
                    f"jsonl_{size_label(size)}_mb_per_s": round(size / MB / big_res["seconds"], 1)}

        out |= guarded("jsonl_rss", notes, [f"peak_rss_mb_jsonl_{size_label(args.rss_gb * 1e9)}"], jsonl_rss)
    return out


# ---------------------------------------------------------------------------------------------------- main

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=79,
                        help="labelled pages (79 distinct; beyond that sections repeat and trafilatura's "
                             "deduplicate drops repeated text)")
    parser.add_argument("--pydoc-pages", type=int, default=150, help="real pydoc pages (no labels)")
    parser.add_argument("--warc-rounds", type=int, default=5, help="rounds of the headline WARC comparison")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every other figure")
    parser.add_argument("--min-seconds", type=float, default=2.0,
                        help="our side repeats whole passes until this long, so short runs are measurable")
    parser.add_argument("--wet-pages", type=int, default=8000)
    parser.add_argument("--wiki-pages", type=int, default=3000)
    parser.add_argument("--code-mb", type=float, default=30)
    parser.add_argument("--table-rows", type=int, default=100_000)
    parser.add_argument("--rss-gb", type=float, default=1.0, help="JSONL size for the flat-memory check (0: off)")
    parser.add_argument("--rss-warc-mb", type=float, default=150,
                        help="gzip WARC size for the flat-memory check (0: off)")
    parser.add_argument("--cpu", type=int, default=max(os.sched_getaffinity(0)),
                        help="the core every worker is pinned to (-1: no pinning)")
    parser.add_argument("--skip-readers", action="store_true", help="only the WARC/WET figures")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    check_anchor()
    started = time.perf_counter()
    notes: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as tmpdir:
        tmp = Path(tmpdir)
        html = build_html_warc(tmp, args.pages, args.pydoc_pages)
        log(f"HTML WARC: {len(html['urls'])} HTML 200 responses ({len(html['labels'])} labelled), "
            f"{html['html_bytes'] / MB:.1f} MB of HTML, {html['file_bytes'] / MB:.2f} MB gzip; "
            f"{html['removed']} non-HTML records removed before timing")
        result = warc_vs_datatrove(args, tmp, html)
        log(f"WARC: ours {result['docs_per_s']} docs/s vs datatrove {result['datatrove_docs_per_s']} docs/s "
            f"= {result['vs_datatrove']}x; recall {result['recall']} vs {result['datatrove_recall']}")
        result |= wet_figures(args, tmp)
        if not args.skip_readers:
            result |= other_readers(args, tmp, notes)
        jsonl_ok = not args.skip_readers and result.get("jsonl_mb_per_s") is not None
        result |= flat_memory(args, tmp, html, result["peak_rss_mb"], notes, jsonl_ok)
    result |= {"anchor": ANCHOR, "warc_rounds": args.warc_rounds, "rounds": args.rounds, "pinned_cpu": args.cpu,
               "seconds_total": round(time.perf_counter() - started), "notes": notes}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
