"""Threads for file work: an ordered map, and a one-ahead prefetcher.

OpenCV's codecs and torch's copies release the GIL, so threads overlap decoding and writing
with the main thread's work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def thread_map(fn: Callable[[T], R], items: Sequence[T], workers: int = 4) -> Iterator[R]:
    """Ordered map over ``workers`` threads (in this thread when there is nothing to share)."""
    if workers <= 1 or len(items) <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(fn, items)


def prefetch(items: Sequence[T], load: Callable[[T], R]) -> Iterator[R]:
    """Yield ``load(item)`` for each item in order, loading the next item in a background
    thread while the caller works on the current one (train batches, predict images)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(load, items[0]) if items else None
        for index in range(len(items)):
            current = future.result()  # type: ignore[union-attr]
            future = pool.submit(load, items[index + 1]) if index + 1 < len(items) else None
            yield current
