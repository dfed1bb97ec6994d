"""The one timing loop the benchmark scripts share: warm up, then time each call with a monotonic clock."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def call_times(fn: Callable[[], object], repeats: int, warmup: int = 0) -> list[float]:
    """Seconds taken by each of ``repeats`` calls of ``fn``, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 0) -> tuple[float, list[float]]:
    """Median and all call times, in seconds."""
    times = call_times(fn, repeats, warmup)
    return statistics.median(times), times
