"""Run one function over many argument tuples: in this process, or in a spawn process pool."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
from collections.abc import Callable, Iterable


class Pool:
    """``with Pool(workers) as run: run(fn, argument tuples)``; one worker runs everything in this process."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.pool: concurrent.futures.Executor | None = None

    def __enter__(self) -> Callable[[Callable, Iterable[tuple]], list]:
        if self.workers > 1:
            # spawn, not fork: the parent may hold threads (s3fs' event loop) a forked child would inherit stuck.
            self.pool = concurrent.futures.ProcessPoolExecutor(self.workers,
                                                               mp_context=multiprocessing.get_context("spawn"))
        return self.run

    def run(self, fn: Callable, args: Iterable[tuple]) -> list:
        args = list(args)
        if self.pool is None or len(args) < 2:
            return [fn(*a) for a in args]
        return list(self.pool.map(fn, *zip(*args, strict=True)))

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown()
