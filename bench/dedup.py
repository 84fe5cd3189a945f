"""MinHash dedup per core: pretrain's staged dedup vs datatrove 0.10's MinHash pipeline, same documents, same run.

Runs with no arguments. Builds its input in a temp dir: real documents from the installed Python
(sections of ``pydoc_data.topics``, plain-text pydoc pages of stdlib modules, stdlib ``.py`` files and
long docstrings), plus planted copies with labels: exact copies, 5% and 10% of words edited, the last
10% cut off, the site template swapped, code identifiers renamed, and distinct pages that share only a
long template (must stay apart). The documents are dealt over 2 sources x 2 partitions (one Parquet
shard each), so copies cross partitions and sources.

Each side runs in its own process pinned to one core (``--cpu``), alternating order for ``--rounds``
rounds; figures are medians. Ours: the ``pretrain.data.dedup`` stage functions in order at the
recipe's default settings (sketch -> buckets -> cluster -> remove -> finish), repeated until
``--min-seconds`` so short runs are measurable, peak RSS per stage (VmHWM, reset between stages).
Datatrove: ``MinhashDedupSignature -> MinhashDedupBuckets -> MinhashDedupCluster -> MinhashDedupFilter``
(+ ParquetWriter) at its default ``MinhashConfig`` (5-grams, 14 buckets x 8 hashes), driven in-process
one rank at a time, reading the same Parquet shards.

Quality, from each side's first pass, against the planted labels:
- recall: a planted copy is found when it and its original end up in one cluster with one of them removed;
- precision: of the removed documents, those whose cluster holds a member of their own planted group;
  a false positive is any other removal (a template-sharing page merged with another one always
  counts as one) unless the removed document truly is a near copy of a cluster member (word-3-gram
  Jaccard >= 0.2 or half of one's 3-grams in the other): such near copies occur naturally in the
  real sources (pydoc pages repeat inherited methods, docstrings are copied between modules), are
  found in neither label, and are reported apart with samples, not counted.

The LAST line printed is one JSON object; ``vs_datatrove`` (our signature-stage docs/s over datatrove's,
both per core) comes first. Needs the ``bench`` extra (datatrove, and spaCy for its English word tokenizer).
"""

from __future__ import annotations

import argparse
import ast
import collections
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pretrain.data.samples.copies import rename_identifiers, truncate, word_edits
from pretrain.data.samples.stdlib import chunks, pydoc_pages, stdlib_sources

TARGET = 10.0  # the goal: our signature docs/s at least this many times datatrove's
GOAL_QUALITY = 0.95
SOURCES = ("code", "docs")
PARTITIONS_PER_SOURCE = 2
TEMPLATE_A = ("Example Docs | Home | Guides | API | Blog | Search\nYou are reading the documentation for version 3.\n",
              "\nCopyright 2024 Example Corp. Built with Sphinx. Report a bug on the tracker.\n")
TEMPLATE_B = ("MirrorSite :: Python reference mirror :: fast downloads\nLast updated automatically.\n",
              "\n(c) mirror team. Cookies help us deliver our services. Privacy | Terms | Contact\n")
SHARED = ("Welcome to the Example community portal. Sign in to save your preferences, follow topics, "
          "and get notifications when pages change. Our newsletter arrives every Tuesday with new guides, "
          "release notes and events near you. Skip to main content. Toggle navigation. Language: English. ")
KINDS = ("exact", "edit5", "edit10", "truncate", "template", "rename")
ANCHOR = ("datatrove 0.10 MinhashDedupSignature -> Buckets -> Cluster -> Filter (+ ParquetWriter) at its default "
          "MinhashConfig (5-grams, 14 buckets x 8 hashes, 64-bit hashes), English spaCy word tokenizer, in-process, "
          "pinned to the same core as ours")
_WORD = re.compile(r"\w+")


def log(message: str) -> None:
    print(f"[dedup-bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------------------------------------------- inputs

def real_documents(seed: int) -> list[tuple[str, str]]:
    """(origin, text) of every real document, the four origins interleaved so that none dominates:
    reference sections, plain-text pydoc pages, source files (their first 6000 characters), docstrings."""
    from pydoc_data.topics import topics

    by_origin: dict[str, list[str]] = {
        "reference": [c for name in sorted(topics) for c in chunks(topics[name], 1500, 600)],
        "pydoc": [c for page in pydoc_pages() for c in chunks(page, 3000, 600)], "code": [], "docstring": []}
    for source in stdlib_sources():
        if len(source) > 1500:
            by_origin["code"].append(source[:6000])
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            doc = ast.get_docstring(node) if isinstance(node, ast.FunctionDef | ast.ClassDef) else None
            if doc and len(doc) > 500:
                by_origin["docstring"].append(doc)
    rng = random.Random(seed)
    for docs in by_origin.values():
        rng.shuffle(docs)
    longest = max(map(len, by_origin.values()))
    return [(origin, docs[i]) for i in range(longest) for origin, docs in by_origin.items() if i < len(docs)]


def build_corpus(originals: int, copy_every: int, shared: int, seed: int) -> dict[str, Any]:
    """Documents with ids and labels: {"docs": [(id, text)], "groups": {id: group}, "kinds", "boilerplate"}."""
    rng = random.Random(seed)
    real = real_documents(seed)
    # Distinct prose bodies under one long shared header and footer: they share only the template, so
    # each must stay. Bodies (taken from the end, before the originals) are picked so that no two whole
    # pages have a word-3-gram Jaccard >= 0.25.
    picked: list[set] = []
    shared_pages: list[tuple[str, str]] = []
    for index in range(len(real) - 1, -1, -1):
        if len(shared_pages) == shared:
            break
        where, text = real[index]
        page = SHARED * 2 + text[:800] + SHARED
        mine = shingle_set(page)
        if where in ("reference", "docstring") and all(near(mine, other)[0] < 0.25 for other in picked):
            picked.append(mine)
            shared_pages.append((where, page))
            del real[index]
    if len(real) < originals:
        log(f"only {len(real)} real documents left for {originals} originals")
        originals = len(real)
    docs, groups, kinds, boilerplate, origin = [], {}, {}, [], {}
    copies: collections.Counter = collections.Counter()
    for i, (where, text) in enumerate(real[:originals]):
        wrapped = TEMPLATE_A[0] + text + TEMPLATE_A[1]
        docs.append((f"orig-{i}", wrapped))
        origin[f"orig-{i}"] = where
        if i % copy_every:
            continue
        kinds_here = KINDS if where == "code" else KINDS[:-1]  # renamed identifiers: code only
        kind = kinds_here[copies[where] % len(kinds_here)]
        copies[where] += 1
        body = {"exact": text, "edit5": word_edits(text, rng, 0.05), "edit10": word_edits(text, rng, 0.10),
                "truncate": truncate(text), "template": text,
                "rename": rename_identifiers(text, rng) if kind == "rename" else text}[kind]
        template = TEMPLATE_B if kind == "template" else TEMPLATE_A
        docs.append((f"copy-{i}", template[0] + body + template[1]))
        groups[f"orig-{i}"] = groups[f"copy-{i}"] = i
        kinds[f"copy-{i}"] = kind
        origin[f"copy-{i}"] = where
    for where, page in shared_pages:
        doc_id = f"shared-{len(boilerplate)}"
        docs.append((doc_id, page))
        boilerplate.append(doc_id)
        origin[doc_id] = where
    rng.shuffle(docs)
    return {"docs": docs, "groups": groups, "kinds": kinds, "boilerplate": boilerplate, "origin": origin}


def write_partitions(tmp: Path, docs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Deal the documents round-robin over sources x partitions; one documents shard each (run order)."""
    from pretrain.data.documents import ShardWriter

    cells = [(s, f"p{i}") for s in SOURCES for i in range(PARTITIONS_PER_SOURCE)]
    dealt: dict[tuple[str, str], list[tuple[str, str]]] = collections.defaultdict(list)
    for n, doc in enumerate(docs):
        dealt[cells[n % len(cells)]].append(doc)
    out = []
    for source, key in cells:
        url = str(tmp / "input" / source / f"{key}.parquet")
        with ShardWriter(url) as writer:
            writer.write_rows([{"id": i, "text": t, "source": source, "source_id": i,
                                "url": f"https://{source}.example/{i}", "date": "", "license": "", "meta": "{}"}
                               for i, t in dealt[(source, key)]])
            shard = writer.close()
        out.append({"source": source, "key": key, "url": shard.url, "rows": shard.rows, "bytes": shard.bytes,
                    "checksum": shard.checksum, "ids": [i for i, _ in dealt[(source, key)]]})
    return out  # sources by name, partitions by key: the order our plan runs them in


# ---------------------------------------------------------------------------------------------------- workers

def _peak_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def _reset_peak() -> None:
    """Reset VmHWM to the current RSS, so the next stage's peak is its own (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


class Stages:
    """Seconds and peak RSS per stage of one pass."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.peak_mb: dict[str, float] = {}

    def run(self, name: str, fn, *args):
        _reset_peak()
        start = time.perf_counter()
        result = fn(*args)
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
        self.peak_mb[name] = max(self.peak_mb.get(name, 0.0), _peak_mb())
        return result


def ours_pass(parts: list[dict[str, Any]], run_root: Path) -> tuple[Stages, list[list]]:
    """Every stage of our dedup once, as ``pretrain.data.dedup.stages.dedup`` runs them in one process."""
    from pretrain.config import load_recipe
    from pretrain.data.dedup import buckets, clusters, remove, sketch, stages, tables
    from pretrain.data.dedup.plan import make_plan
    from pretrain.data.readers.base import Partition
    from pretrain.manifest import Manifest, Shard

    filtered = []
    for p in parts:
        partition = Partition(source=p["source"], url=f"mem://{p['source']}", rel=p["key"])
        shard = Shard(url=p["url"], rows=p["rows"], bytes=p["bytes"], checksum=p["checksum"])
        filtered.append(Manifest(kind="filtered", root=str(run_root), fingerprint=f"{p['source']}-{p['key']}",
                                 shards=[shard], stats={"documents_in": p["rows"], "kept": p["rows"], "dropped": 0,
                                                        "dropped_by_reason": {}},
                                 extra={"partition": partition.to_dict(), "ingest_stats": {
                                     "records": p["rows"], "documents": p["rows"], "skipped": {}}}))
    recipe = load_recipe("tiny", [f"run_root={run_root}"])
    timer = Stages()
    plan = timer.run("plan", make_plan, recipe, filtered)
    for part in plan.partitions:
        timer.run("signature", sketch.sketch_partition, plan, part)
    for unit in plan.bucket_units():
        timer.run("buckets", buckets.run_unit, plan, unit)
    timer.run("cluster", clusters.cluster, plan)
    for part in plan.partitions:
        timer.run("filter", remove.remove_partition, plan, part)
    timer.run("finish", stages.finish, plan)
    removed = [[part, r["row"], r["rep_part"], r["rep_row"], r["kind"]] for part in plan.partitions
               for r in tables.read(plan.removals_url(part)).to_pylist()]
    return timer, removed


def datatrove_pass(parts: list[dict[str, Any]], root: Path) -> tuple[Stages, list[list]]:
    """datatrove's four MinHash steps at their defaults, one rank per partition / bucket, in this process."""
    import numpy as np
    import pyarrow.parquet as pq
    from datatrove.data import Document
    from datatrove.pipeline.dedup import minhash as dt
    from datatrove.pipeline.writers import ParquetWriter

    _xxhash_accepts_str()
    config = dt.MinhashConfig()

    def documents(p: dict[str, Any]):
        for batch in pq.ParquetFile(p["url"]).iter_batches(columns=["id", "text"], batch_size=1024):
            for doc_id, text in zip(batch.column("id").to_pylist(), batch.column("text").to_pylist(), strict=True):
                yield Document(text=text, id=doc_id)

    timer = Stages()
    world = len(parts)
    for rank, p in enumerate(parts):
        step = dt.MinhashDedupSignature(output_folder=str(root / "signatures"), config=config)
        timer.run("signature", step.run, documents(p), rank, world)
    for bucket in range(config.num_buckets):
        step = dt.MinhashDedupBuckets(input_folder=str(root / "signatures"), output_folder=str(root / "buckets"),
                                   config=config)
        timer.run("buckets", step.run, None, bucket, config.num_buckets)
    step = dt.MinhashDedupCluster(input_folder=str(root / "buckets"), output_folder=str(root / "remove"), config=config,
                               save_cluster_id=True)
    timer.run("cluster", step.run, None, 0, 1)
    for rank, p in enumerate(parts):
        kept = dt.MinhashDedupFilter(input_folder=str(root / "remove")).run(documents(p), rank, world)
        writer = ParquetWriter(output_folder=str(root / "output"))
        timer.run("filter", lambda docs, r, w=writer: list(w.run(docs, r, world)), kept, rank)
    removed = []
    for rank in range(world):
        remove_file, cluster_file = root / "remove" / f"{rank:06d}.remove", root / "remove" / f"{rank:06d}.clusters"
        rows = np.fromfile(remove_file, "<u4") if remove_file.exists() else np.zeros(0, "<u4")
        pairs = np.fromfile(cluster_file, "<u4").reshape(-1, 2) if cluster_file.exists() else np.zeros((0, 2), "<u4")
        cluster_of = dict(pairs.tolist())
        gone = set(rows.tolist())
        removed += [[rank, r, int(cluster_of[r])] for r in sorted(gone)]
        removed += [[rank, d, c, "member"] for d, c in pairs.tolist() if d not in gone]  # kept cluster members
    return timer, removed


def _xxhash_accepts_str() -> None:
    """datatrove 0.10 hashes ``str`` n-grams with xxhash; xxhash >= 4 refuses ``str`` (3.x encoded it as
    UTF-8 itself). Then give datatrove's two wrappers the same UTF-8 encoding, so the anchor runs as published."""
    import xxhash
    from datatrove.utils.hashes import xxhash as wrappers

    try:
        xxhash.xxh64_intdigest("probe")
    except TypeError:
        wrappers.xxhash64 = lambda data: xxhash.xxh64_intdigest(data.encode() if isinstance(data, str) else data)
        wrappers.xxhash32 = lambda data: xxhash.xxh32_intdigest(data.encode() if isinstance(data, str) else data)


def worker_main(args: argparse.Namespace) -> None:
    """One side in this process: passes until ``min_seconds``; medians of stage seconds; removals of pass 1."""
    import shutil

    if args.cpu >= 0:
        os.sched_setaffinity(0, {args.cpu})
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    parts = json.loads(Path(args.input).read_text())
    run = ours_pass if args.side == "ours" else datatrove_pass
    passes: list[Stages] = []
    removed: list[list] = []
    start = time.perf_counter()
    while not passes or time.perf_counter() - start < args.min_seconds:
        root = Path(tempfile.mkdtemp(prefix=f"{args.side}-", dir=args.work))
        timer, got = run(parts, root)
        shutil.rmtree(root, ignore_errors=True)
        passes.append(timer)
        removed = removed or got
    seconds = {k: statistics.median(p.seconds[k] for p in passes) for k in passes[0].seconds}
    peak = {k: max(p.peak_mb[k] for p in passes) for k in passes[0].peak_mb}
    print(json.dumps({"side": args.side, "passes": len(passes), "seconds": seconds, "peak_rss_mb": peak,
                      "documents": sum(p["rows"] for p in parts), "removed": removed}))


def worker(side: str, parts_path: Path, work: Path, cpu: int, min_seconds: float) -> dict[str, Any]:
    """One side in a fresh process (clean imports, its own peak RSS); its JSON line."""
    cmd = [sys.executable, __file__, "--worker", side, "--input", str(parts_path), "--work", str(work),
           "--cpu", str(cpu), "--min-seconds", str(min_seconds)]
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               RAYON_NUM_THREADS="1", LOGURU_LEVEL="WARNING", TQDM_DISABLE="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, check=False, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{side} worker failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------------- quality

def shingle_set(text: str, k: int = 3) -> set[tuple[str, ...]]:
    words = _WORD.findall(text.lower())
    return {tuple(words[i:i + k]) for i in range(max(1, len(words) - k + 1))}


def near(a: set, b: set) -> tuple[float, float]:
    """(Jaccard, containment of the smaller in the larger) of two shingle sets."""
    inter = len(a & b)
    return inter / max(1, len(a | b)), inter / max(1, min(len(a), len(b)))


def clusters_of(side: str, removed: list[list], names: list[list[str]]) -> tuple[set[str], dict[str, list[str]]]:
    """(removed ids, {removed id: every member of its cluster}) from a side's worker output."""
    members: dict[Any, set[str]] = collections.defaultdict(set)
    gone, cluster = set(), {}
    for row in removed:
        doc = names[row[0]][row[1]]
        if side == "ours":
            key = (row[2], row[3])
            members[key] |= {doc, names[row[2]][row[3]]}
        else:
            key = row[2]
            members[key].add(doc)
        if side == "ours" or len(row) == 3:
            gone.add(doc)
            cluster[doc] = key
    return gone, {doc: sorted(members[key]) for doc, key in cluster.items()}


def quality(side: str, removed: list[list], names: list[list[str]], corpus: dict[str, Any],
            texts: dict[str, str]) -> dict[str, Any]:
    """Recall, precision and naturally occurring near copies of one side, against the planted labels."""
    gone, cluster = clusters_of(side, removed, names)
    groups, kinds = corpus["groups"], corpus["kinds"]
    found: collections.Counter = collections.Counter()
    total: collections.Counter = collections.Counter()
    for copy, kind in kinds.items():
        original = copy.replace("copy", "orig")
        total[kind] += 1
        found[kind] += (copy in gone and original in cluster[copy]) or (original in gone and copy in cluster[original])
    right = natural = false = 0
    natural_samples, false_samples = [], []
    shingles: dict[str, set] = {}
    boilerplate = set(corpus["boilerplate"])
    for doc in sorted(gone):
        others = [m for m in cluster[doc] if m != doc]
        if doc in groups and any(groups.get(m) == groups[doc] for m in others):
            right += 1
            continue
        if doc in boilerplate:  # a template page may be a natural copy of a real page, never of another template page
            others = [m for m in others if m not in boilerplate]
        mine = shingles.setdefault(doc, shingle_set(texts[doc]))
        best = max(((*near(mine, shingles.setdefault(m, shingle_set(texts[m]))), m) for m in others),
                   default=(0.0, 0.0, ""))
        if best[0] >= 0.2 or best[1] >= 0.5:
            natural += 1
            if len(natural_samples) < 3:
                natural_samples.append(_sample(doc, best, texts, corpus))
        else:
            false += 1
            if len(false_samples) < 3:
                false_samples.append(_sample(doc, best, texts, corpus))
    counted = right + false
    return {"recall": round(sum(found.values()) / max(1, sum(total.values())), 4),
            "precision": round(right / counted, 4) if counted else 1.0,
            "recall_by_kind": {k: f"{found[k]}/{total[k]}" for k in sorted(total)},
            "removed": len(gone), "removed_right": right, "false_positives": false, "natural_near_copies": natural,
            "natural_samples": natural_samples, "false_positive_samples": false_samples}


def _sample(doc: str, best: tuple, texts: dict[str, str], corpus: dict[str, Any]) -> dict[str, Any]:
    head = lambda t: re.sub(r"\s+", " ", t.removeprefix(TEMPLATE_A[0]))[:120]  # noqa: E731
    return {"removed": doc, "origin": corpus["origin"].get(doc), "near": best[2], "jaccard3": round(best[0], 3),
            "containment3": round(best[1], 3), "removed_text": head(texts[doc]),
            "near_text": head(texts[best[2]]) if best[2] else ""}


# ---------------------------------------------------------------------------------------------------- main

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--originals", type=int, default=2400, help="real documents (each kept or copied)")
    parser.add_argument("--copy-every", type=int, default=3, help="every n-th original gets one planted copy")
    parser.add_argument("--shared", type=int, default=60, help="distinct pages sharing one long template")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per side, alternating order")
    parser.add_argument("--min-seconds", type=float, default=5.0,
                        help="our side repeats whole passes until this long, so short runs are measurable")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpu", type=int, default=max(os.sched_getaffinity(0)),
                        help="the core every worker is pinned to (-1: no pinning)")
    parser.add_argument("--worker", choices=["ours", "datatrove"], help=argparse.SUPPRESS)
    parser.add_argument("--input", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        args.side = args.worker
        worker_main(args)
        return
    try:
        import datatrove.pipeline.dedup.minhash  # noqa: F401
        import spacy  # noqa: F401
    except ImportError as err:
        raise SystemExit(f"the datatrove anchor cannot run ({err}); "
                         "install the bench extra: pip install -e '.[bench]'") from err
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dedup-bench-") as tmpdir:
        tmp = Path(tmpdir)
        corpus = build_corpus(args.originals, args.copy_every, args.shared, args.seed)
        texts = dict(corpus["docs"])
        parts = write_partitions(tmp, corpus["docs"])
        parts_path = tmp / "parts.json"
        parts_path.write_text(json.dumps(parts))
        names = [p["ids"] for p in parts]
        n_docs = len(corpus["docs"])
        real = collections.Counter(w for d, w in corpus["origin"].items() if d.startswith("orig-"))
        log(f"corpus: {n_docs} documents ({sum(real.values())} real originals from {dict(real)}), "
            f"{len(corpus['kinds'])} planted copies {dict(collections.Counter(corpus['kinds'].values()))}, "
            f"{len(corpus['boilerplate'])} template-sharing pages; mean {sum(map(len, texts.values())) / n_docs:.0f} "
            f"chars; {len(parts)} partitions")
        runs: dict[str, list[dict[str, Any]]] = {"ours": [], "datatrove": []}
        sides = [("ours", args.min_seconds), ("datatrove", 0.0)]
        for r in range(args.rounds):
            for side, min_seconds in sides if r % 2 == 0 else sides[::-1]:
                res = worker(side, parts_path, tmp, args.cpu, min_seconds)
                runs[side].append(res)
                sig = res["seconds"]["signature"]
                log(f"round {r + 1}/{args.rounds} {side}: signature {n_docs / sig:.0f} docs/s, whole pipeline "
                    f"{n_docs / sum(res['seconds'].values()):.0f} docs/s ({res['passes']} passes); stages "
                    + ", ".join(f"{k} {v:.2f}s" for k, v in res["seconds"].items()))
        ours_q = quality("ours", runs["ours"][0]["removed"], names, corpus, texts)
        theirs_q = quality("datatrove", runs["datatrove"][0]["removed"], names, corpus, texts)
        for side, q in (("ours", ours_q), ("datatrove", theirs_q)):
            log(f"{side}: recall {q['recall']} precision {q['precision']} by kind {q['recall_by_kind']}; removed "
                f"{q['removed']} ({q['removed_right']} planted, {q['false_positives']} false, "
                f"{q['natural_near_copies']} natural near copies)")
            for s in q["false_positive_samples"]:
                log(f"  {side} false positive: {s}")

    def med(side: str, stage: str | None = None) -> float:
        return statistics.median(r["seconds"][stage] if stage else sum(r["seconds"].values()) for r in runs[side])

    ours_sig, theirs_sig = n_docs / med("ours", "signature"), n_docs / med("datatrove", "signature")
    result = {
        "vs_datatrove": round(ours_sig / theirs_sig, 1),
        "recall": ours_q["recall"], "precision": ours_q["precision"],
        "datatrove_recall": theirs_q["recall"], "datatrove_precision": theirs_q["precision"],
        "signature_docs_per_s": round(ours_sig, 1), "datatrove_signature_docs_per_s": round(theirs_sig, 1),
        "pipeline_docs_per_s": round(n_docs / med("ours"), 1),
        "datatrove_pipeline_docs_per_s": round(n_docs / med("datatrove"), 1),
        "stage_seconds": {k: round(med("ours", k), 3) for k in runs["ours"][0]["seconds"]},
        "datatrove_stage_seconds": {k: round(med("datatrove", k), 3) for k in runs["datatrove"][0]["seconds"]},
        "peak_rss_mb": {k: round(max(r["peak_rss_mb"][k] for r in runs["ours"]), 1)
                        for k in runs["ours"][0]["peak_rss_mb"]},
        "datatrove_peak_rss_mb": {k: round(max(r["peak_rss_mb"][k] for r in runs["datatrove"]), 1)
                                  for k in runs["datatrove"][0]["peak_rss_mb"]},
        "recall_by_kind": ours_q["recall_by_kind"], "datatrove_recall_by_kind": theirs_q["recall_by_kind"],
        "removed": ours_q["removed"], "datatrove_removed": theirs_q["removed"],
        "false_positives": ours_q["false_positives"], "datatrove_false_positives": theirs_q["false_positives"],
        "natural_near_copies": ours_q["natural_near_copies"],
        "datatrove_natural_near_copies": theirs_q["natural_near_copies"],
        "natural_samples": ours_q["natural_samples"], "false_positive_samples": ours_q["false_positive_samples"],
        "datatrove_natural_samples": theirs_q["natural_samples"],
        "documents": n_docs, "planted_copies": len(corpus["kinds"]), "partitions": len(names),
        "goal": {"vs_datatrove": TARGET, "recall": GOAL_QUALITY, "precision": GOAL_QUALITY},
        "anchor": ANCHOR, "rounds": args.rounds, "pinned_cpu": args.cpu,
        "seconds_total": round(time.perf_counter() - started),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
