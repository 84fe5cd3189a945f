"""Loader throughput and resume time: TokenLoader from local disk and from a real S3 server (moto).

Runs with no arguments. Builds its own token shards in a temp dir (random ids, EOS-separated
documents of geometric length, uint16: ``--shards`` x ``--tokens-per-shard``), then measures:
- ``tokens_per_s_local``: TokenLoader.batch back to back on memory-mapped shards, next to the anchor,
  a plain np.memmap reader drawing random windows (``anchor_tokens_per_s_local``), same batch shape;
- ``tokens_per_s_s3``: the same loader on the shards uploaded to a moto S3 server on loopback, back to
  back (I/O bound: ranged block reads through the prefetch threads), next to the server's ceiling (one exact
  ranged GET per random window, 16 threads, no cache: ``anchor_tokens_per_s_s3``), plus the time a step waits for
  its batch when a training step takes ``--compute-ms`` (``s3_wait_ms_p50/p99`` after warm-up: the
  prefetch hides the reads);
- ``resume_s``: from constructing a loader to holding the batch of step 1,000,000 (S3, the slower side;
  ``resume_s_local`` too): no state to replay, only the sample -> window map.

The LAST line printed is one JSON object with ``tokens_per_s_local``, ``tokens_per_s_s3``, ``resume_s`` first.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from pretrain import storage
from pretrain.data.samples import s3server
from pretrain.tokens import ShardRef, TokenLoader, TokenShardWriter

VOCAB, EOS = 32768, 0


def log(message: str) -> None:
    print(f"[loader-bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def build_shards(root: str, shards: int, tokens: int, seed: int = 0) -> list[ShardRef]:
    rng = np.random.default_rng(seed)
    refs = []
    for n in range(shards):
        lengths = rng.geometric(1 / 600, size=tokens // 300)
        lengths = lengths[np.cumsum(lengths) <= tokens]
        lengths = np.r_[lengths, tokens - lengths.sum()] if lengths.sum() < tokens else lengths
        ids = rng.integers(1, VOCAB, size=tokens, dtype=np.uint16)
        ids[np.cumsum(lengths) - 1] = EOS
        url = storage.join(root, f"part-{n:05d}")
        w = TokenShardWriter(url, VOCAB, EOS, "bench", source=f"src{n % 2}", split="train")
        w.add_documents(ids, lengths, text_bytes=int(tokens * 4))
        refs.append(ShardRef(url, f"src{n % 2}", w.close()["tokens"]))
    return refs


def time_steps(fn, seconds: float, warmup: int = 3) -> tuple[int, float]:
    for s in range(warmup):
        fn(s)
    t0, steps = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        fn(warmup + steps)
        steps += 1
    return steps, time.perf_counter() - t0


def memmap_anchor(refs: list[ShardRef], seq: int, batch: int, seconds: float) -> float:
    """A plain random-window reader: np.memmap per shard, uniform shard then uniform start."""
    maps = [np.memmap(r.url + ".bin", dtype=np.uint16, mode="r") for r in refs]
    rng = np.random.default_rng(0)

    def step(_s: int) -> np.ndarray:
        out = np.empty((batch, seq + 1), dtype=np.int64)
        for row in range(batch):
            m = maps[int(rng.integers(len(maps)))]
            start = int(rng.integers(0, m.size - seq - 1))
            out[row] = m[start:start + seq + 1]
        return out

    steps, dt = time_steps(step, seconds)
    return steps * batch * seq / dt


def s3_anchor(remote: list[ShardRef], seq: int, batch: int, seconds: float, workers: int = 16) -> float:
    """The server's ceiling for random windows: one exact ranged GET per window, ``workers`` at once, no cache."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(1)
    files = [storage.filesystem(r.url + ".bin") for r in remote]
    with ThreadPoolExecutor(workers) as pool:
        def window(_row: int) -> bytes:
            i = int(rng.integers(len(files)))
            fs, path = files[i]
            start = int(rng.integers(0, remote[i].tokens - seq - 1)) * 2
            return fs.cat_file(path, start=start, end=start + (seq + 1) * 2)

        steps, dt = time_steps(lambda _s: list(pool.map(window, range(batch))), seconds)
    return steps * batch * seq / dt


def start_s3() -> tuple[subprocess.Popen, str]:
    """The moto S3 server the tests use, and this process's AWS settings pointed at it."""
    proc, endpoint = s3server.start()
    os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1"})
    return proc, endpoint


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--tokens-per-shard", type=int, default=8_000_000)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--compute-ms", type=float, default=100.0)
    p.add_argument("--block-kib", type=int, default=0, help="S3 block size (0: the loader's default)")
    p.add_argument("--cache-mib", type=int, default=32,
                   help="S3 block cache budget: well below the data, as for a corpus far larger than memory")
    args = p.parse_args(argv)
    seq, batch = args.seq_len, args.batch
    result: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="loader-bench-") as tmp:
        t = time.perf_counter()
        refs = build_shards(tmp, args.shards, args.tokens_per_shard)
        total = sum(r.tokens for r in refs)
        log(f"built {len(refs)} shards, {total / 1e6:.0f}M tokens in {time.perf_counter() - t:.1f}s")

        loader = TokenLoader(refs, seq, seed=0)
        steps, dt = time_steps(lambda s: loader.batch(s, 0, 1, batch), args.seconds)
        local = steps * batch * seq / dt
        anchor = memmap_anchor(refs, seq, batch, args.seconds)
        t = time.perf_counter()
        TokenLoader(refs, seq, seed=0).batch(1_000_000, 0, 1, batch)
        resume_local = time.perf_counter() - t
        log(f"local: {local / 1e6:.1f}M tokens/s (memmap anchor {anchor / 1e6:.1f}M), resume {resume_local:.4f}s")

        proc, endpoint = start_s3()
        try:
            bucket = f"s3://bench-{uuid.uuid4().hex[:8]}"
            storage.check_reachable(bucket + "/")
            t = time.perf_counter()
            storage.upload_dir(tmp, bucket + "/tokens")
            log(f"uploaded to {endpoint} in {time.perf_counter() - t:.1f}s")
            remote = [ShardRef(f"{bucket}/tokens/{Path(r.url).name}", r.source, r.tokens) for r in refs]
            kw: dict[str, int] = {"cache_bytes": args.cache_mib << 20}
            if args.block_kib:
                kw["block_bytes"] = args.block_kib << 10

            t = time.perf_counter()
            with TokenLoader(remote, seq, seed=0, **kw) as fresh:
                fresh.batch(1_000_000, 0, 1, batch)
            resume_s3 = time.perf_counter() - t

            with TokenLoader(remote, seq, seed=0, prefetch_steps=4, **kw) as s3_loader:
                steps, dt = time_steps(lambda s: s3_loader.batch(s, 0, 1, batch), args.seconds)
                s3_rate = steps * batch * seq / dt
                fetched = s3_loader.io_stats["fetched_bytes"]
                amplification = fetched / max(1, (steps + 3) * batch * (seq + 1) * 2)
            anchor_s3 = s3_anchor(remote, seq, batch, args.seconds)
            log(f"s3: {s3_rate / 1e6:.2f}M tokens/s back to back (server ceiling, one GET per window with 16 threads: "
                f"{anchor_s3 / 1e6:.2f}M), read amplification {amplification:.1f}x, resume {resume_s3:.3f}s")

            waits = []
            with TokenLoader(remote, seq, seed=1, **kw) as s3_loader:
                for s in range(40):
                    t = time.perf_counter()
                    s3_loader.batch(s, 0, 1, batch)
                    waits.append(time.perf_counter() - t)
                    time.sleep(args.compute_ms / 1e3)  # the training step
            after = sorted(waits[3:])
            p50, p99 = statistics.median(after) * 1e3, after[int(0.99 * (len(after) - 1))] * 1e3
            log(f"s3 with {args.compute_ms:.0f} ms steps: wait p50 {p50:.2f} ms, p99 {p99:.2f} ms "
                f"(first step {waits[0] * 1e3:.0f} ms)")
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    result = {"tokens_per_s_local": round(local), "tokens_per_s_s3": round(s3_rate),
              "resume_s": round(max(resume_s3, resume_local), 4), "resume_s_local": round(resume_local, 4),
              "resume_s_s3": round(resume_s3, 4), "anchor_tokens_per_s_local": round(anchor),
              "vs_memmap_anchor": round(local / anchor, 2), "anchor_tokens_per_s_s3": round(anchor_s3),
              "s3_vs_anchor": round(s3_rate / anchor_s3, 2), "s3_wait_ms_p50": round(p50, 3),
              "s3_wait_ms_p99": round(p99, 3), "s3_first_step_ms": round(waits[0] * 1e3, 1),
              "compute_ms_per_step": args.compute_ms, "s3_read_amplification": round(amplification, 1),
              "tokens": total, "shards": len(refs), "seq_len": seq, "batch": batch, "cpus": os.cpu_count()}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
