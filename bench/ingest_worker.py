"""One timed side of ``bench/ingest.py``, in its own process so its peak RSS is its own.

Prints one JSON line: seconds of the timed passes, documents in/out, characters kept and peak RSS
(the process itself and, for datatrove, its extractor sandbox child). Pinned to one core when told,
so "per core" holds for datatrove too (its extractor runs in a second process, in lockstep).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

Rows = Iterator[tuple[str, str]]  # (url, text) of each document a side yields


def _peak_mb(who: int) -> float:
    """Peak RSS in MB. Our own from VmHWM: ``ru_maxrss`` survives exec, so it would count the bench parent."""
    if who == resource.RUSAGE_SELF:
        try:
            with open("/proc/self/status") as f:
                return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
        except (OSError, StopIteration):
            pass
    return resource.getrusage(who).ru_maxrss / 1024  # KiB on Linux


def timed_passes(run_once: Callable[[IO[str] | None], tuple[int, int]], min_seconds: float,
                 texts_out: str | None) -> dict[str, Any]:
    """Run whole passes until ``min_seconds`` have passed; the first pass may write its texts."""
    passes = docs = chars = 0
    start = time.perf_counter()
    while True:
        sink = open(texts_out, "w", encoding="utf-8") if texts_out and passes == 0 else None  # noqa: SIM115
        try:
            n, c = run_once(sink)
        finally:
            if sink is not None:
                sink.close()
        passes += 1
        docs, chars = docs + n, chars + c
        if time.perf_counter() - start >= min_seconds:
            break
    seconds = time.perf_counter() - start
    return {"seconds": seconds / passes, "passes": passes, "docs_out": docs // passes, "chars_out": chars // passes}


def consume(rows: Rows, sink: IO[str] | None, prefix: str | None = None,
            split: dict[str, float] | None = None) -> tuple[int, int]:
    """Count the rows; with ``prefix``, add the time each row took (since the last) to its URL's group."""
    n = c = 0
    last = time.perf_counter()
    for url, text in rows:
        n += 1
        c += len(text)
        if sink is not None:
            sink.write(json.dumps({"url": url, "text": text}, ensure_ascii=False) + "\n")
        if prefix is not None and split is not None:
            now = time.perf_counter()
            group = "prefix" if url.startswith(prefix) else "other"
            split[group] = split.get(group, 0.0) + now - last
            last = now
    return n, c


# ---------------------------------------------------------------------------------------------------- ours

def ours_rows(fmt: str, location: str, options: dict[str, Any], ledger: list[dict]) -> Rows:
    """plan + read of our reader module, exactly as ingest drives it; keeps each partition's ledger."""
    from pretrain.config import SourceConfig
    from pretrain.data.readers import reader
    from pretrain.data.readers.base import ReadStats

    src = SourceConfig(name="bench", format=fmt, uri=location, **options)
    module = reader(fmt)
    for part in module.plan(src, location):
        stats = ReadStats()
        n = 0
        for row in module.read(src, part, stats):
            n += 1
            yield row["url"], row["text"]
        ledger.append({"records": stats.records, "docs": n, "skipped": sum(stats.skipped.values())})


def ours_warmup(fmt: str) -> None:
    """Import the reader and its extractor before the clock starts (a worker pays this once)."""
    from pretrain.data.readers import reader

    reader(fmt)
    if fmt == "warc":
        from pretrain.data.readers.html import extract_text

        extract_text("<html><body><main><p>warm up the extractor</p></main></body></html>")


# ---------------------------------------------------------------------------------------------------- datatrove

def datatrove_rows(location: str, extract: bool, stats: dict[str, int]) -> Rows:
    """WarcReader (+ Trafilatura), both at their defaults, driven as a datatrove pipeline drives them."""
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.readers import WarcReader

    folder, name = os.path.split(os.path.abspath(location))
    reader = WarcReader(folder, glob_pattern=name)
    docs = reader(data=None, rank=0, world_size=1)
    extractor = Trafilatura() if extract else None
    if extractor is not None:
        docs = extractor.run(docs, rank=0, world_size=1)
    for doc in docs:
        yield doc.metadata.get("url") or "", doc.text
    if extractor is not None:
        for key in ("timeout", "clean_error", "broken_process", "dropped"):
            if key in extractor.stats.stats:
                stats[key] = stats.get(key, 0) + int(extractor.stats[key].total)


def datatrove_warmup(extract: bool) -> None:
    """Import datatrove's reader stack (and trafilatura, which its sandbox child inherits by fork)."""
    import cchardet  # noqa: F401
    import magic  # noqa: F401
    from datatrove.pipeline.readers import WarcReader  # noqa: F401
    from warcio.archiveiterator import ArchiveIterator  # noqa: F401

    if extract:
        import trafilatura

        trafilatura.extract("<html><body><article><p>warm up the extractor here</p></article></body></html>")
    from datatrove.utils.logging import logger

    logger.remove()  # its per-document warnings would flood the bench's progress lines
    logger.add(sys.stderr, level="ERROR")


# ---------------------------------------------------------------------------------------------------- anchors

def jsonl_anchor_rows(location: str, text_field: str) -> Rows:
    """The I/O floor for JSON Lines: a plain binary line loop with orjson, nothing else."""
    import orjson

    with open(location, "rb") as f:
        for line in f:
            yield "", orjson.loads(line)[text_field]


def parquet_anchor(location: str, text_field: str) -> tuple[int, int]:
    """The I/O floor for Parquet: pyarrow reads the whole table in one call (no Python per row)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    column = pq.read_table(location).column(text_field)
    return len(column), int(pc.sum(pc.utf8_length(column)).as_py() or 0)


# ---------------------------------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("side", choices=["ours", "datatrove", "datatrove-wet", "jsonl-anchor", "parquet-anchor"])
    parser.add_argument("--format", default="warc")
    parser.add_argument("--input", required=True)
    parser.add_argument("--option", action="append", default=[], help="SourceConfig key=JSON value")
    parser.add_argument("--min-seconds", type=float, default=0.0)
    parser.add_argument("--texts-out", default=None)
    parser.add_argument("--cpu", type=int, default=-1)
    parser.add_argument("--split-prefix", default=None, help="also time documents whose URL starts with this apart")
    args = parser.parse_args(argv)
    if args.cpu >= 0:
        os.sched_setaffinity(0, {args.cpu})
    options = {k: json.loads(v) for k, v in (o.split("=", 1) for o in args.option)}
    ledger: list[dict] = []
    extra: dict[str, int] = {}
    if args.side == "ours":
        ours_warmup(args.format)
        make: Callable[[], Rows] = lambda: ours_rows(args.format, args.input, options, ledger)  # noqa: E731
    elif args.side in ("datatrove", "datatrove-wet"):
        extract = args.side == "datatrove"
        datatrove_warmup(extract)
        make = lambda: datatrove_rows(args.input, extract, extra)  # noqa: E731
    elif args.side == "jsonl-anchor":
        import orjson  # noqa: F401

        make = lambda: jsonl_anchor_rows(args.input, options.get("text_field", "text"))  # noqa: E731
    else:
        import pyarrow.parquet  # noqa: F401

        field = options.get("text_field", "text")
        result = timed_passes(lambda _sink: parquet_anchor(args.input, field), args.min_seconds, None)
    if args.side != "parquet-anchor":
        split: dict[str, float] = {}
        result = timed_passes(lambda sink: consume(make(), sink, args.split_prefix, split), args.min_seconds,
                              args.texts_out)
        if split:
            result["split_seconds"] = {k: v / result["passes"] for k, v in split.items()}
    result["peak_rss_mb"] = round(_peak_mb(resource.RUSAGE_SELF), 1)
    result["children_peak_rss_mb"] = round(_peak_mb(resource.RUSAGE_CHILDREN), 1)
    if ledger:
        records = sum(p["records"] for p in ledger)
        result["ledger_ok"] = records == sum(p["docs"] + p["skipped"] for p in ledger)
        result["records"] = records // result["passes"]
        result["partitions"] = len(ledger) // result["passes"]
    result.update(extra)
    print(json.dumps(result))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    main()
