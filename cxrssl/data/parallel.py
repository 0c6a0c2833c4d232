"""Parallel image work without child processes.

`fork` copies only the calling thread: if an MLflow, tqdm or OpenMP thread holds a lock at that
moment, the child waits on it forever (seen here: synthetic generation hung under pytest after a
training run). `spawn`/`forkserver` instead re-import the caller's `__main__`, which breaks
scripts without a main guard, stdin and notebooks. OpenCV and NumPy release the GIL while they
decode, draw, resize and encode, so a thread pool gets most of the speed-up with neither problem.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int, in_flight: int = 64) -> Iterator[R]:
    """`map(fn, items)` on `workers` threads, results in input order, at most `in_flight` pending
    (so a streaming caller keeps bounded memory)."""
    if workers <= 1:
        yield from map(fn, items)
        return
    from collections import deque

    with ThreadPoolExecutor(workers) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= in_flight:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
