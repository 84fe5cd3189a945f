"""Filter-chain throughput per core and keep/drop agreement: pretrain's rules vs datatrove 0.10, same input.

Runs with no arguments. Builds its input in a temp dir: the extracted texts (pretrain's WARC reader)
of real pages (pydoc pages of stdlib modules, ``pretrain.data.corpus``) and of the labelled corpus of
``pretrain.data.samples.quality`` (real pydoc and language-reference pages, planted copies, planted
junk: gibberish, boilerplate, link farms, repetition, short pages), plus prose that passes the quality
rules and so reaches the repetition and C4 rules (label ``prose``: the language reference's sections,
the Wikipedia sample's cleaned articles, long stdlib docstrings) and planted prose documents that each
trip one repetition, C4 or quality rule (label ``planted``), written to one JSONL both sides read.

Three sides, each in its own process pinned to one core, alternating for ``--rounds`` rounds (medians):

(a) ``ours``: our chain of the *published* variant of Gopher quality + Gopher repetition + C4 (the
    same rules and thresholds as datatrove's), through the production ``Chain`` and ``Doc``;
(b) ``datatrove``: ``GopherQualityFilter`` + ``GopherRepetitionFilter`` + ``C4QualityFilter`` at their
    defaults (``filter()`` called per document in the same order; without ``run()``'s stats bookkeeping,
    which only makes datatrove faster here);
(c) ``web``: our default ``web`` profile with every rule family (informative).

Agreement is measured on the documents that either side drops (both drop / either drops); every
document one side drops and the other keeps is printed, grouped by the rule that dropped it, with a
sample. The LAST line printed is one JSON object; ``vs_datatrove`` (our docs/s over datatrove's) first.
Needs datatrove 0.10 with spaCy (its English word tokenizer is ``spacy.blank("en")``: no download).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TARGET_SPEED = 10.0  # the goals: docs/s at least 10x datatrove's, agreement at least 0.95
TARGET_AGREEMENT = 0.95
ANCHOR = ("datatrove 0.10.1 GopherQualityFilter + GopherRepetitionFilter + C4QualityFilter at their defaults "
          "(English, spaCy word tokenizer), filter() per document; ours: the same rules' published variant")

# datatrove's drop reasons -> our rule names (the recipe keys), so both sides' counts line up
DATATROVE_RULES = {
    "gopher_short_doc": "gopher_quality.min_doc_words",
    "gopher_long_doc": "gopher_quality.max_doc_words",
    "gopher_below_avg_threshold": "gopher_quality.min_avg_word_length",
    "gopher_above_avg_threshold": "gopher_quality.max_avg_word_length",
    "gopher_too_many_hashes": "gopher_quality.max_symbol_word_ratio",
    "gopher_too_many_ellipsis": "gopher_quality.max_symbol_word_ratio",
    "gopher_too_many_bullets": "gopher_quality.max_bullet_lines_ratio",
    "gopher_too_many_end_ellipsis": "gopher_quality.max_ellipsis_lines_ratio",
    "gopher_below_alpha_threshold": "gopher_quality.min_alpha_words_ratio",
    "gopher_enough_stop_words": "gopher_quality.min_stop_words",
    "empty": "gopher_repetition.empty",
    "dup_para_frac": "gopher_repetition.max_dup_para_frac",
    "dup_para_char_frac": "gopher_repetition.max_dup_para_char_frac",
    "dup_line_frac": "gopher_repetition.max_dup_line_frac",
    "dup_line_char_frac": "gopher_repetition.max_dup_line_char_frac",
    "lorem_ipsum": "c4.lorem_ipsum",
    "curly_bracket": "c4.curly_bracket",
    "too_few_sentences": "c4.min_sentences",
}
# Where the published variant may still differ from datatrove (printed next to any difference it explains).
KNOWN_DIFFERENCES = {
    "words": "datatrove's words are spaCy tokens; ours come from one regular expression reproducing spaCy's English "
             "rules (affixes, infixes, n't/'s, its abbreviation and contraction exceptions, URLs): rare tokens "
             "(emoticon merges, URL-like names) can still be cut differently",
    "gopher_quality.min_stop_words": "ours applies the English stop-word rule to English-looking documents only "
                                     "(datatrove to every document)",
    "c4.min_sentences": "datatrove counts spaCy sentencizer sentences per kept line; ours counts sentence-final "
                        "punctuation followed by a space (at least one per kept line): abbreviations differ",
    "cjk": "scripts without spaces: ours counts one word per character (never dropped for length by construction)",
}


def log(message: str) -> None:
    print(f"[clean-bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------------------------------------------- input

def build_input(tmp: Path, pydoc_pages: int, seed: int, docstrings: int) -> dict[str, Any]:
    """One JSONL of extracted texts ({url, text, label}): the labelled quality corpus, more pydoc pages, prose."""
    from pretrain.config import SourceConfig
    from pretrain.data import corpus
    from pretrain.data.readers import warc
    from pretrain.data.readers.base import ReadStats
    from pretrain.data.samples.quality import write_quality_corpus

    log("writing the labelled quality corpus (real pydoc and reference pages, copies, planted junk)")
    labels = write_quality_corpus(tmp / "quality", seed=seed)
    kinds: dict[str, str] = {u: "real" for u in labels["real"]}
    kinds |= {u: f"copy:{c['kind']}" for u, c in labels["copies"].items()}
    kinds |= {u: f"junk:{k}" for u, k in labels["junk"].items()}
    sources = [tmp / "quality" / "web" / "crawl.warc.gz"]
    if pydoc_pages:
        log(f"rendering up to {pydoc_pages} pydoc pages (real pages; no labels)")
        sources += [Path(u) for u in corpus.write_pydoc_warcs(str(tmp / "pydoc"), pydoc_pages, 1)]
    src = SourceConfig(name="bench", format="warc", uri=str(tmp))
    out = tmp / "texts.jsonl"
    seen: set[str] = set()
    counts: collections.Counter = collections.Counter()
    with open(out, "w", encoding="utf-8") as f:
        for path in sources:
            for part in warc.plan(src, str(path)):
                for row in warc.read(src, part, ReadStats()):
                    if row["url"] in seen:
                        continue  # the labelled corpus renders the first pydoc pages too
                    seen.add(row["url"])
                    kind = kinds.get(row["url"], "real")
                    counts[kind.split(":")[0]] += 1
                    f.write(json.dumps({"url": row["url"], "text": row["text"], "label": kind}, ensure_ascii=False)
                            + "\n")
        log(f"adding prose: reference sections, Wikipedia sample articles, up to {docstrings} long docstrings, "
            "planted repetitive/boilerplate prose")
        extra = [*reference_docs(), *wikipedia_docs(tmp / "wiki"), *docstring_docs(docstrings), *license_docs()]
        extra += planted_docs([t for _, t, _ in extra], seed)
        for url, text, kind in extra:
            if url in seen:
                continue
            seen.add(url)
            counts[kind.split(":")[0]] += 1
            f.write(json.dumps({"url": url, "text": text, "label": kind}, ensure_ascii=False) + "\n")
    return {"path": str(out), "docs": len(seen), "by_label": dict(counts), "bytes": out.stat().st_size}


def reference_docs() -> list[tuple[str, str, str]]:
    """Each language-reference section as one document: its paragraphs joined with blank lines."""
    from pretrain.data.samples.web import reference_sections

    return [(f"ref://{i}/{title[:40]}", f"{title}\n\n" + "\n\n".join(paragraphs), "prose:reference")
            for i, (title, paragraphs) in enumerate(reference_sections())]


def wikipedia_docs(tmp: Path, pages: int = 50) -> list[tuple[str, str, str]]:
    """The Wikipedia sample's articles as our reader cleans them (the wikitext markup removed)."""
    from pretrain.config import SourceConfig
    from pretrain.data.readers import wikipedia
    from pretrain.data.readers.base import ReadStats
    from pretrain.data.samples.wikipedia import write_wikipedia_dump

    tmp.mkdir(parents=True, exist_ok=True)
    path = str(tmp / "enwiki-sample.xml.bz2")
    write_wikipedia_dump(path, pages)
    src = SourceConfig(name="w", format="wikipedia", uri=path)
    return [(row["url"], row["text"], "prose:wikipedia")
            for part in wikipedia.plan(src, path) for row in wikipedia.read(src, part, ReadStats())
            if row["text"].strip()]


def _prose_like(text: str, share: float = 0.85) -> bool:
    """Mostly plain words (no doctest, few quoted names or symbols): picks prose, not code, by a cheap proxy."""
    tokens = text.split()
    plain = sum(t.strip(".,;:!?").isalpha() for t in tokens)
    return ">>>" not in text and bool(tokens) and plain >= share * len(tokens)


def docstring_docs(limit: int, min_words: int = 120) -> list[tuple[str, str, str]]:
    """Long docstrings (modules, classes, functions) of the standard library's pure-Python modules."""
    import ast
    import inspect
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    found: list[tuple[str, str, str]] = []
    for path in sorted(root.glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        except (SyntaxError, ValueError):
            continue
        nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef))]
        for node in nodes:
            doc = ast.get_docstring(node, clean=False)
            if not doc or len(doc.split()) < min_words or not _prose_like(doc):
                continue
            name = getattr(node, "name", "")
            found.append((f"doc://{path.stem}/{name}", inspect.cleandoc(doc), "prose:docstring"))
            if len(found) >= limit:
                return found
    return found


def license_docs() -> list[tuple[str, str, str]]:
    """The system's license texts (``/usr/share/common-licenses``): long, plain English legal prose."""
    root = Path("/usr/share/common-licenses")
    files = sorted(f for f in root.iterdir() if f.is_file() and not f.is_symlink()) if root.is_dir() else []
    return [(f"license://{f.name}", f.read_text(encoding="utf-8", errors="replace"), "prose:license") for f in files]


def planted_docs(prose: list[str], seed: int) -> list[tuple[str, str, str]]:
    """Prose documents made to trip one repetition, C4 or quality rule each (real sentences, planted layout)."""
    import random

    rng = random.Random(seed)
    paras = [p for t in prose for p in t.split("\n\n")
             if 30 <= len(p.split()) <= 120 and p.rstrip()[-1:] in ".!?" and _prose_like(p, 0.9)]
    sentences = [(x if x[-1] in ".!?" else x + ".") for p in paras
                 for x in (" ".join(y.split()) for y in p.split(". ")) if 6 <= len(x.split()) <= 30 and _prose_like(x)]
    rng.shuffle(paras)
    rng.shuffle(sentences)
    docs: list[tuple[str, str, str]] = []

    def add(kind: str, text: str) -> None:
        docs.append((f"planted://{kind}/{len(docs)}", text, f"planted:{kind}"))

    for k in range(8):
        base = paras[k * 6: k * 6 + 6]
        # the same paragraph many times among a few others: duplicated paragraphs (count and characters)
        add("dup_paragraphs", "\n\n".join([*base[:3], *[base[3]] * (4 + k), base[4]]))
        # the same short lines again and again (a menu pasted into every section): duplicated lines
        menu = ["Home", "Read the documentation", "Download the latest release", "Contact the maintainers"]
        lines = [*sentences[k * 20: k * 20 + 12]]
        add("dup_lines", "\n".join(line for s in lines for line in (s, *menu)))
        # one sentence, reworded a little, repeated: duplicated and top n-grams
        s0 = sentences[200 + k]
        add("repeated_sentence", " ".join(f"{s0} {sentences[300 + k * 10 + j]}" for j in range(10)))
        # one phrase over and over inside otherwise ordinary prose: the top 2-4-gram's character share
        phrase = rng.choice(["the data model", "in this case", "of the object"])
        add("top_ngram", " ".join(f"{w} {phrase}" for w in " ".join(base[5:6] * 2).split()[:120]))
        # ordinary paragraphs with cookie / javascript / policy lines (C4 removes the lines and keeps the doc)
        boiler = ["This website uses cookies to improve your experience.",
                  "Please enable JavaScript to view this page.",
                  "Read our privacy policy and terms of use.", "Copyright 2024. All rights reserved."]
        add("c4_boilerplate", "\n".join([*sentences[400 + k * 8: 400 + k * 8 + 8], *boiler]))
        # lorem ipsum filler and a code-like brace: C4's document rules
        lorem = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod."
        add("c4_lorem", "\n".join([*sentences[500 + k * 6: 500 + k * 6 + 6], lorem]))
        add("c4_curly", "\n".join([*sentences[560 + k * 6: 560 + k * 6 + 6], "The mapping is written {key: value}."]))
        # many lines without end punctuation and one sentence: too few sentences once C4 drops the lines
        add("c4_few_sentences", "\n".join([" ".join(sentences[620 + k * 12 + j].rstrip(".").split()[:9])
                                             for j in range(12)] + [sentences[700 + k]]))
        # lines that end in an ellipsis, and a bullet list: Gopher quality's line rules
        add("ellipsis_lines", "\n".join(" ".join(s.split()[:10]) + " ..." for s in sentences[720 + k * 10:
                                                                                          730 + k * 10]))
        add("bullet_lines", "\n".join(f"• {s}" for s in sentences[820 + k * 10: 830 + k * 10]))
    return docs


def read_input(path: str) -> list[dict[str, str]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


# ---------------------------------------------------------------------------------------------------- workers

def _peak_mb() -> float:
    """Peak RSS of this process (VmHWM: ``ru_maxrss`` survives exec and would count the parent)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _ours_judge(profile: str):
    """(text, url) -> (reason, value, final text) of our chain: the published rules, or a default profile."""
    from pretrain.config import C4Settings, FilterConfig
    from pretrain.data.filters import c4, gopher
    from pretrain.data.filters.base import Doc
    from pretrain.data.filters.step import Chain, Stats, chain_for

    cfg = FilterConfig()
    if profile == "published":
        web = cfg.profiles.web
        steps = (gopher.quality_rules(web.gopher_quality.model_copy(update={"variant": "published"}))
                 + gopher.repetition_rules(web.gopher_repetition.model_copy(update={"variant": "published"}))
                 + c4.rules(C4Settings.model_validate({"variant": "published"})))
        chain = Chain(steps, Stats())
    else:
        chain = chain_for(cfg, profile)

    def judge(text: str, url: str) -> tuple[str | None, str | None, str]:
        v = chain.judge(Doc(text, url=url))
        return v.reason, v.value, v.text if v.text is not None else text
    judge("The warm up document. " * 60, "")  # import and build what the first document would (tables, models)
    return judge, chain.stats


def _datatrove_judge():
    from datatrove.data import Document
    from datatrove.pipeline.filters import C4QualityFilter, GopherQualityFilter, GopherRepetitionFilter
    from datatrove.utils.logging import logger

    logger.remove()
    logger.add(sys.stderr, level="ERROR")
    filters = [GopherQualityFilter(), GopherRepetitionFilter(), C4QualityFilter()]

    def judge(text: str, url: str) -> tuple[str | None, str | None, str]:
        doc = Document(text=text, id=url)
        for f in filters:
            result = f.filter(doc)
            keep, reason = result if isinstance(result, tuple) else (result, None)
            if not keep:
                return DATATROVE_RULES.get(reason or "", _dt_ngram_rule(reason or type(f).__name__)), None, text
        return None, None, doc.text
    judge("The warm up document. " * 60, "")  # loads spaCy's blank English pipeline
    return judge, None


def _dt_ngram_rule(reason: str) -> str:
    if reason.startswith("top_") and reason.endswith("_gram"):
        return f"gopher_repetition.max_top_ngram_char_frac.{reason[4:-5]}"
    if reason.startswith("duplicated_") and reason.endswith("_n_grams"):
        return f"gopher_repetition.max_dup_ngram_char_frac.{reason[11:-8]}"
    return reason


def _cold_start(worker: str):
    """What forgets state that repeated passes over the same input would otherwise reuse."""
    if worker == "datatrove":
        return lambda: None
    from pretrain.data.filters import gibberish
    from pretrain.data.filters.base import clear_token_memo

    def cold() -> None:
        clear_token_memo()
        gibberish.clear_memo()
    return cold


def run_worker(args: argparse.Namespace) -> None:
    """One side: whole passes over the input until ``--min-seconds``; verdicts of the first pass to a file."""
    if args.cpu >= 0:
        os.sched_setaffinity(0, {args.cpu})
    sys.path.insert(0, str(ROOT / "src"))
    rows = [(r["text"], r["url"]) for r in read_input(args.input)]
    if args.worker == "datatrove":
        judge, stats = _datatrove_judge()
    else:
        judge, stats = _ours_judge("published" if args.worker == "ours" else args.worker)
    if args.profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        for text, url in rows:
            judge(text, url)
        prof.disable()
        pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(30)
    cold_start = _cold_start(args.worker)
    passes, verdicts = 0, []
    start = time.perf_counter()
    while True:
        cold_start()  # every pass starts with an empty token memo: repeating the input must not warm it
        if passes == 0:
            for text, url in rows:
                reason, value, final = judge(text, url)
                verdicts.append([reason, value, hash(final) if reason is None else None])
        else:
            for text, url in rows:
                judge(text, url)
        passes += 1
        if time.perf_counter() - start >= args.min_seconds:
            break
    seconds = (time.perf_counter() - start) / passes
    if args.verdicts_out:
        Path(args.verdicts_out).write_text(json.dumps(verdicts))
    result = {"seconds": seconds, "passes": passes, "docs": len(rows), "peak_rss_mb": round(_peak_mb(), 1)}
    if stats is not None and stats.rule_errors:
        result["rule_errors"] = dict(stats.rule_errors)
    print(json.dumps(result))


def worker(side: str, location: str, cpu: int, min_seconds: float, verdicts_out: str | None) -> dict[str, Any]:
    """One side in a fresh process (clean imports, its own peak RSS); its JSON line."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", side, "--input", location, "--cpu", str(cpu),
           "--min-seconds", str(min_seconds)]
    if verdicts_out:
        cmd += ["--verdicts-out", verdicts_out]
    env = {**os.environ, "PYTHONHASHSEED": "0"}  # the text hashes of two processes compare equal
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{side} worker failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------------- agreement

def compare(rows: list[dict[str, str]], ours: list[list], theirs: list[list]) -> dict[str, Any]:
    """Keep/drop agreement on the documents either side drops, per-rule counts, and every difference."""
    either = both = 0
    only: dict[str, dict[str, list[int]]] = {"ours": collections.defaultdict(list),
                                             "datatrove": collections.defaultdict(list)}
    same_rule = 0
    rule_pairs: collections.Counter = collections.Counter()
    kept_both = same_text = 0
    for i, (o, t) in enumerate(zip(ours, theirs, strict=True)):
        o_drop, t_drop = o[0] is not None, t[0] is not None
        if o_drop or t_drop:
            either += 1
        if o_drop and t_drop:
            both += 1
            same_rule += o[0] == t[0]
            if o[0] != t[0]:
                rule_pairs[(o[0], t[0])] += 1
        elif o_drop:
            only["ours"][o[0]].append(i)
        elif t_drop:
            only["datatrove"][t[0]].append(i)
        else:
            kept_both += 1
            same_text += o[2] == t[2]
    differences = []
    for side, groups in only.items():
        for rule, idx in sorted(groups.items(), key=lambda kv: -len(kv[1])):
            sample = rows[idx[0]]
            differences.append({
                "dropped_by": side, "rule": rule, "docs": len(idx),
                "labels": dict(collections.Counter(rows[i]["label"] for i in idx)),
                "sample_url": sample["url"], "sample_value": ours[idx[0]][1] if side == "ours" else None,
                "sample_text": " ".join(sample["text"][:240].split()),
                "urls": [rows[i]["url"] for i in idx[:8]],
            })
    return {
        "agreement": round(both / either, 4) if either else 1.0,
        "dropped_by_either": either, "dropped_by_both": both,
        "same_first_rule_when_both_drop": round(same_rule / both, 4) if both else 1.0,
        "first_rule_pairs_when_both_drop": {f"{a} | {b}": n for (a, b), n in rule_pairs.most_common(10)},
        "c4_text_agreement": round(same_text / kept_both, 4) if kept_both else 1.0,
        "differences": differences,
    }


def drops_by_rule(verdicts: list[list]) -> dict[str, int]:
    return dict(collections.Counter(v[0] for v in verdicts if v[0] is not None).most_common())


def drops_by_label(rows: list[dict[str, str]], verdicts: list[list]) -> dict[str, str]:
    """Per label kind (real, copy, junk): dropped / total."""
    total: collections.Counter = collections.Counter()
    dropped: collections.Counter = collections.Counter()
    for row, v in zip(rows, verdicts, strict=True):
        kind = row["label"].split(":")[0]
        total[kind] += 1
        dropped[kind] += v[0] is not None
    return {k: f"{dropped[k]}/{total[k]}" for k in sorted(total)}


def print_differences(diff: dict[str, Any]) -> None:
    log(f"agreement {diff['agreement']} on {diff['dropped_by_either']} documents either side drops "
        f"({diff['dropped_by_both']} dropped by both); same first rule when both drop: "
        f"{diff['same_first_rule_when_both_drop']}; C4-rewritten text identical on {diff['c4_text_agreement']} "
        "of the documents both keep")
    if not diff["differences"]:
        log("no systematic difference: every document one side drops, the other drops too")
    for d in diff["differences"]:
        other = "datatrove" if d["dropped_by"] == "ours" else "ours"
        log(f"DIFFERENCE {d['docs']} doc(s) dropped by {d['dropped_by']} only ({other} keeps), rule {d['rule']}, "
            f"labels {d['labels']}")
        value = f" value={d['sample_value']}" if d["sample_value"] else ""
        log(f"    sample {d['sample_url']}{value}: {d['sample_text'][:200]!r}")
        why = KNOWN_DIFFERENCES.get(d["rule"]) or KNOWN_DIFFERENCES["words"]  # word counts feed every other rule
        log(f"    known cause: {why}")
    for pair, n in diff["first_rule_pairs_when_both_drop"].items():
        log(f"    both drop, first rule differs (ours | datatrove): {pair} x{n}")


# ---------------------------------------------------------------------------------------------------- main

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pydoc-pages", type=int, default=161, help="pydoc pages of stdlib modules (real pages)")
    parser.add_argument("--docstrings", type=int, default=150, help="long stdlib docstrings (real prose)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-seconds", type=float, default=2.0, help="each side repeats passes until this long")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--input", default=None, help="a JSONL of {url, text, label} instead of building one")
    parser.add_argument("--keep-input", default=None, help="copy the built JSONL here (to rerun with --input)")
    parser.add_argument("--cpu", type=int, default=max(os.sched_getaffinity(0)),
                        help="the core every worker is pinned to (-1: no pinning)")
    parser.add_argument("--worker", choices=["ours", "datatrove", "web"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--verdicts-out", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--profile", action="store_true", help="with --worker: cProfile one pass to stderr")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        run_worker(args)
        return
    sys.path.insert(0, str(ROOT / "src"))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="clean-bench-") as tmpdir:
        tmp = Path(tmpdir)
        if args.input:
            data = {"path": args.input}
        else:
            data = build_input(tmp, args.pydoc_pages, args.seed, args.docstrings)
            if args.keep_input:
                Path(args.keep_input).write_bytes(Path(data["path"]).read_bytes())
        rows = read_input(data["path"])
        chars = sum(len(r["text"]) for r in rows)
        labels = collections.Counter(r["label"].split(":")[0] for r in rows)
        log(f"input: {len(rows)} extracted documents ({dict(labels)}), {chars / 1e6:.2f} M characters")
        sides = ["ours", "datatrove", "web"]
        runs: dict[str, list[dict[str, Any]]] = {s: [] for s in sides}
        verdicts: dict[str, list[list]] = {}
        for r in range(args.rounds):
            for side in sides if r % 2 == 0 else sides[::-1]:
                out = str(tmp / f"verdicts-{side}.json") if r == 0 else None
                res = worker(side, data["path"], args.cpu, args.min_seconds if side != "datatrove" else 0.0, out)
                runs[side].append(res)
                if out:
                    verdicts[side] = json.loads(Path(out).read_text())
                log(f"round {r + 1}/{args.rounds} {side}: {len(rows) / res['seconds']:.1f} docs/s "
                    f"({res['passes']} passes), peak RSS {res['peak_rss_mb']:.0f} MB")
    seconds = {s: statistics.median(x["seconds"] for x in runs[s]) for s in sides}
    diff = compare(rows, verdicts["ours"], verdicts["datatrove"])
    print_differences(diff)
    web_diff = compare(rows, verdicts["web"], verdicts["datatrove"])
    result = {
        "vs_datatrove": round(seconds["datatrove"] / seconds["ours"], 2),
        "agreement": diff["agreement"],
        "docs_per_s": round(len(rows) / seconds["ours"], 1),
        "datatrove_docs_per_s": round(len(rows) / seconds["datatrove"], 1),
        "web_profile_docs_per_s": round(len(rows) / seconds["web"], 1),
        "meets_target": (seconds["datatrove"] / seconds["ours"] >= TARGET_SPEED
                         and diff["agreement"] >= TARGET_AGREEMENT),
        "mb_per_s": round(chars / 1e6 / seconds["ours"], 2),
        "datatrove_mb_per_s": round(chars / 1e6 / seconds["datatrove"], 3),
        "drops_by_rule": drops_by_rule(verdicts["ours"]),
        "datatrove_drops_by_rule": drops_by_rule(verdicts["datatrove"]),
        "web_profile_drops_by_rule": drops_by_rule(verdicts["web"]),
        "dropped_by_label": drops_by_label(rows, verdicts["ours"]),
        "datatrove_dropped_by_label": drops_by_label(rows, verdicts["datatrove"]),
        "web_profile_dropped_by_label": drops_by_label(rows, verdicts["web"]),
        "peak_rss_mb": max(x["peak_rss_mb"] for x in runs["ours"]),
        "datatrove_peak_rss_mb": max(x["peak_rss_mb"] for x in runs["datatrove"]),
        "web_profile_peak_rss_mb": max(x["peak_rss_mb"] for x in runs["web"]),
        "dropped_by_either": diff["dropped_by_either"],
        "dropped_by_both": diff["dropped_by_both"],
        "same_first_rule_when_both_drop": diff["same_first_rule_when_both_drop"],
        "c4_text_agreement": diff["c4_text_agreement"],
        "differences": [{k: d[k] for k in ("dropped_by", "rule", "docs", "labels", "sample_url")}
                        for d in diff["differences"]],
        "web_profile_agreement_with_datatrove": web_diff["agreement"],
        "rule_errors": {s: runs[s][0].get("rule_errors", {}) for s in ("ours", "web")},
        "vs_datatrove_per_round": [round(d["seconds"] / o["seconds"], 1)
                                   for o, d in zip(runs["ours"], runs["datatrove"], strict=True)],
        "docs": len(rows), "input_chars": chars, "labels": dict(labels), "rounds": args.rounds,
        "pinned_cpu": args.cpu, "anchor": ANCHOR, "known_differences": KNOWN_DIFFERENCES,
        "seconds_total": round(time.perf_counter() - started),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
