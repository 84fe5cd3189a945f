"""Encoding throughput per core: pretrain's encoder vs datatrove 0.10's DocumentTokenizer, same documents and tokenizer.

Runs with no arguments. Builds its input in a temp dir: real text from the installed Python, three
origins interleaved (plain-text pydoc pages of stdlib modules, the language reference's sections from
``pydoc_data.topics``, stdlib ``.py`` sources), about ``--megabytes`` MB of UTF-8 in one documents Parquet
shard. Trains a byte-level BPE with a vocabulary of 32,768 on it (``pretrain.data.tokenizer``: the sample
drawn across the origins as sources) and saves the Hugging Face folder both sides load.

Three sides, each in its own process pinned to one core with one thread (``RAYON_NUM_THREADS=1``),
alternating order for ``--rounds`` rounds (medians). Each reads the Parquet shard's record batches,
encodes, appends EOS per document and writes uint16 ids to a local file, repeating passes until
``--min-seconds``:

(a) ``ours``: ``Encoder`` as the tokenize step builds it (``auto``: tiktoken when it gives the very ids
    ``tokenizers`` gives, checked on a probe), ids written through a numpy buffer with the document ends;
(b) ``hf``: the same path with the ``tokenizers`` engine (``encode_batch_fast``), the plain library;
(c) ``datatrove``: ``DocumentTokenizer(tokenizer.json, eos_token=EOS, shuffle_documents=False)``: its
    ``encode_batch`` with an EOS post-processor, ``struct.pack`` per document, its ``.ds`` file and index.
    Its document shuffle (a second copy of the file) is off: it is not encoding.

The three output files must be byte-identical (same ids, same EOS placement): that is checked over the
whole corpus. Peak RSS per worker is VmHWM. The LAST line printed is one JSON object with
``tokens_per_s_per_core``, ``rss_mb`` and ``vs_datatrove`` first. Needs the ``bench`` extra (datatrove).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pretrain.data.samples.stdlib import chunks, pydoc_pages, stdlib_sources

VOCAB = 32_768
GOALS = {"tokens_per_s_per_core": 1_000_000, "rss_mb": 300, "vs_datatrove": 1.5}
SIDES = ("ours", "hf", "datatrove")
ANCHOR = ("datatrove 0.10 DocumentTokenizer (tokenizers encode_batch + EOS TemplateProcessing, struct.pack per "
          "document, .ds + .index files), shuffle_documents=False, same tokenizer.json, pinned to the same core, "
          "RAYON_NUM_THREADS=1")


def log(message: str) -> None:
    print(f"[tokenizer-bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------------------------------------------- inputs

def build_documents(megabytes: float, seed: int) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(bench documents, training documents) per origin. The bench takes about ``megabytes`` MB of UTF-8,
    shared evenly across origins (a small origin's leftover to the others); training sees everything."""
    from pydoc_data.topics import topics

    rng = random.Random(seed)
    sources = stdlib_sources()
    everything = {
        "pydoc": [c for page in pydoc_pages() for c in chunks(page, 4000, 400)],
        "reference": [c for key in sorted(topics) for c in chunks(topics[key], 3000, 400)],
        "code": [s for s in sources if len(s) > 1000],
    }
    for docs in everything.values():
        rng.shuffle(docs)
    bench: dict[str, list[str]] = {}
    left = megabytes * 1e6
    by_size = sorted(everything, key=lambda o: sum(map(len, everything[o])))
    for n, origin in enumerate(by_size):
        cap, kept, size = left / (len(by_size) - n), [], 0
        for doc in everything[origin]:
            if size >= cap:
                break
            doc = doc[:20000]  # web-page sized documents
            kept.append(doc)
            size += len(doc.encode("utf-8"))
        bench[origin], left = kept, left - size
    return {o: bench[o] for o in everything}, everything


def write_inputs(work: Path, megabytes: float, seed: int) -> dict[str, Any]:
    """The bench's documents shard (origins interleaved) and the tokenizer, trained on a sample drawn
    evenly across the origins (one documents shard each)."""
    from pretrain.config import TokenizerConfig
    from pretrain.data.documents import ShardWriter
    from pretrain.data.tokenizer import Encoder, load_tokenizer, save_tokenizer, train_tokenizer, training_sample
    from pretrain.manifest import Manifest

    by_origin, training = build_documents(megabytes, seed)
    shards = []
    for origin, docs in training.items():
        writer = ShardWriter(str(work / "sources" / f"{origin}.parquet"))
        writer.write_rows([{"id": f"{origin}-{i}", "text": t, "source": origin} for i, t in enumerate(docs)])
        shard = writer.close()
        shard.meta = {"source": origin}
        shards.append(shard)
    longest = max(map(len, by_origin.values()))
    mixed = [(o, i, docs[i]) for i in range(longest) for o, docs in by_origin.items() if i < len(docs)]
    writer = ShardWriter(str(work / "documents.parquet"))
    writer.write_rows([{"id": f"{o}-{i}", "text": t, "source": o} for o, i, t in mixed])
    writer.close()
    text_bytes = sum(len(t.encode("utf-8")) for _, _, t in mixed)
    log(f"{len(mixed)} documents, {text_bytes / 1e6:.1f} MB of text "
        f"({', '.join(f'{o}: {len(d)}' for o, d in by_origin.items())})")

    start = time.perf_counter()
    manifest = Manifest(kind="documents", root=str(work / "sources"), fingerprint="bench", shards=shards)
    budget = sum(len(t) for docs in training.values() for t in docs)
    tok = train_tokenizer(training_sample(manifest, budget, None, seed), TokenizerConfig(vocab_size=VOCAB))
    folder = str(work / "tokenizer")
    save_tokenizer(tok, folder, model_max_length=2048)
    tok = load_tokenizer(folder)
    log(f"trained a {tok.get_vocab_size()}-token byte-level BPE on {budget / 1e6:.1f} M characters in "
        f"{time.perf_counter() - start:.1f} s")
    probe = [t for _, _, t in mixed[:: max(1, len(mixed) // 64)]]
    encoder = Encoder.create(tok, "auto", probe=probe)
    log(f"encoder: {encoder.kind} ({encoder.reason})")
    return {"parquet": str(work / "documents.parquet"), "tokenizer": folder, "kind": encoder.kind,
            "documents": len(mixed), "text_bytes": text_bytes, "vocab_size": encoder.vocab_size}


# ---------------------------------------------------------------------------------------------------- workers

def _peak_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


class Ours:
    """The tokenize step's inner loop: read batches, encode, add EOS, write ids and document ends."""

    def __init__(self, inputs: dict[str, Any], kind: str) -> None:
        import numpy as np

        from pretrain.data.tokenizer import EOS, Encoder, tokenizer_bytes

        self.inputs = inputs
        self.encoder = Encoder.from_json(tokenizer_bytes(inputs["tokenizer"]).decode(), kind=kind)
        self.eos = json.loads(self.encoder.tok_json)["model"]["vocab"][EOS]
        self.dtype = np.uint16 if self.encoder.vocab_size <= 1 << 16 else np.uint32

    def run(self, out: Path) -> int:
        import numpy as np
        import pyarrow.compute as pc

        from pretrain.data.documents import iter_batches

        tokens, ends, text_bytes = 0, [], 0
        with open(out, "wb") as f:
            for batch in iter_batches(self.inputs["parquet"], columns=["text"]):
                column = batch.column("text")
                text_bytes += pc.sum(pc.binary_length(column)).as_py() or 0
                arrays = self.encoder.encode_batch(column.to_pylist())
                sizes = np.fromiter((a.size + 1 for a in arrays), dtype=np.int64, count=len(arrays))
                doc_ends = np.cumsum(sizes)
                flat = np.empty(int(doc_ends[-1]), dtype=self.dtype)
                for a, end in zip(arrays, doc_ends.tolist(), strict=True):
                    flat[end - 1 - a.size:end - 1] = a
                flat[doc_ends - 1] = self.eos
                flat.tofile(f)
                ends.append(doc_ends + tokens)
                tokens += int(doc_ends[-1])
        np.save(str(out) + ".idx.npy", np.concatenate(ends).astype(np.uint64))
        return tokens


class Datatrove:
    """datatrove's DocumentTokenizer over Documents made from the same Parquet batches."""

    def __init__(self, inputs: dict[str, Any]) -> None:
        from datatrove.pipeline.tokens.tokenizer import DocumentTokenizer

        from pretrain.data.tokenizer import EOS

        self.inputs = inputs
        self.step = DocumentTokenizer(output_folder=tempfile.gettempdir(), shuffle_documents=False, eos_token=EOS,
                                      tokenizer_name_or_path=str(Path(inputs["tokenizer"], "tokenizer.json")))
        assert self.step.tokenizer is not None  # loaded once, as a long-running datatrove task does

    def run(self, out: Path) -> int:
        from datatrove.data import Document
        from datatrove.io import get_datafolder

        from pretrain.data.documents import iter_batches

        def documents():
            for batch in iter_batches(self.inputs["parquet"], columns=["id", "text"]):
                ids, texts = batch.column("id").to_pylist(), batch.column("text").to_pylist()
                for doc_id, text in zip(ids, texts, strict=True):
                    yield Document(text=text, id=doc_id)

        self.step.output_folder = get_datafolder(str(out.parent))
        self.step.save_filename = out.name
        self.step.run(documents(), rank=0, world_size=1)
        (out.parent / f"{out.name}_00000_unshuffled.ds").rename(out)
        return out.stat().st_size // 2  # uint16 ids


def worker_main(args: argparse.Namespace) -> None:
    """One side in this process: its encoder built once, then passes until ``min_seconds``; the median pass."""
    if args.cpu >= 0:
        os.sched_setaffinity(0, {args.cpu})
    inputs = json.loads(Path(args.input).read_text())
    side = Datatrove(inputs) if args.side == "datatrove" else Ours(inputs, inputs["kind"] if args.side == "ours"
                                                                     else "hf")
    seconds, tokens, digest = [], 0, ""
    start = time.perf_counter()
    while not seconds or time.perf_counter() - start < args.min_seconds:
        out = Path(tempfile.mkdtemp(prefix=f"{args.side}-", dir=args.work)) / "part"
        begin = time.perf_counter()
        tokens = side.run(out)
        seconds.append(time.perf_counter() - begin)
        digest = hashlib.sha256(out.read_bytes()).hexdigest()
        for path in out.parent.iterdir():
            path.unlink()
        out.parent.rmdir()
    print(json.dumps({"side": args.side, "passes": len(seconds), "seconds": statistics.median(seconds),
                      "tokens": tokens, "rss_mb": _peak_mb(), "sha256": digest}))


def worker(side: str, input_path: Path, work: Path, cpu: int, min_seconds: float) -> dict[str, Any]:
    """One side in a fresh process (clean imports, its own peak RSS); its JSON line."""
    cmd = [sys.executable, __file__, "--worker", side, "--input", str(input_path), "--work", str(work),
           "--cpu", str(cpu), "--min-seconds", str(min_seconds)]
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               RAYON_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", LOGURU_LEVEL="WARNING", TQDM_DISABLE="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, check=False, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{side} worker failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=float, default=9.0, help="text to build (UTF-8 MB)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-seconds", type=float, default=3.0, help="per side and round: repeat passes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpu", type=int, default=-1, help="core to pin workers to (-1: the last allowed)")
    parser.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--input", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.side = args.worker
        worker_main(args)
        return

    cpu = args.cpu if args.cpu >= 0 else sorted(os.sched_getaffinity(0))[-1]
    with tempfile.TemporaryDirectory(prefix="tokenizer-bench-") as tmp:
        work = Path(tmp)
        inputs = write_inputs(work, args.megabytes, args.seed)
        input_path = work / "inputs.json"
        input_path.write_text(json.dumps(inputs))
        runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
        for round_no in range(args.rounds):
            order = SIDES if round_no % 2 == 0 else SIDES[::-1]
            for side in order:
                result = worker(side, input_path, work, cpu, args.min_seconds)
                runs[side].append(result)
                log(f"round {round_no + 1} {side}: {result['tokens'] / result['seconds'] / 1e6:.3f} M tokens/s, "
                    f"{result['passes']} passes, peak RSS {result['rss_mb']:.0f} MB")

    def rate(side: str) -> float:
        return statistics.median(r["tokens"] / r["seconds"] for r in runs[side])

    digests = {side: {r["sha256"] for r in runs[side]} for side in SIDES}
    same = len(set().union(*digests.values())) == 1
    tokens = runs["ours"][0]["tokens"]
    ours, hf, dt = rate("ours"), rate("hf"), rate("datatrove")
    ours_seconds = statistics.median(r["seconds"] for r in runs["ours"])
    summary = {
        "tokens_per_s_per_core": round(ours),
        "rss_mb": round(max(r["rss_mb"] for r in runs["ours"]), 1),
        "vs_datatrove": round(ours / dt, 2),
        "mb_per_s": round(inputs["text_bytes"] / ours_seconds / 1e6, 2),
        "datatrove_tokens_per_s": round(dt),
        "hf_tokens_per_s": round(hf),
        "encoder": inputs["kind"],
        "vs_hf": round(ours / hf, 2),
        "datatrove_rss_mb": round(max(r["rss_mb"] for r in runs["datatrove"]), 1),
        "hf_rss_mb": round(max(r["rss_mb"] for r in runs["hf"]), 1),
        "identical_output": same,
        "tokens": tokens,
        "documents": inputs["documents"],
        "text_mb": round(inputs["text_bytes"] / 1e6, 2),
        "vocab_size": inputs["vocab_size"],
        "rounds": args.rounds,
        "cpu": cpu,
        "goals": GOALS,
        "anchor": ANCHOR,
    }
    summary["meets_goals"] = bool(same and summary["tokens_per_s_per_core"] >= GOALS["tokens_per_s_per_core"]
                                  and summary["rss_mb"] <= GOALS["rss_mb"]
                                  and summary["vs_datatrove"] >= GOALS["vs_datatrove"])
    if not same:
        log(f"OUTPUTS DIFFER: {digests}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
