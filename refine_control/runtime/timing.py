"""The one timer (quantiser's op selection, parity, benchmarks): warm-up, then repeats; median, p90 and mean."""

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Timing:
    median_s: float
    p90_s: float
    mean_s: float
    n: int


def measure(
    fn: Callable[[], object], *, warmup: int = 1, repeats: int = 5, budget_s: float = 0.0, max_repeats: int = 200
) -> Timing:
    """Time `fn` after `warmup` calls: at least `repeats` runs, more (up to `max_repeats`) while `budget_s` lasts."""
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < repeats or (time.perf_counter() - start < budget_s and len(samples) < max_repeats):
        tic = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - tic)
    samples.sort()
    p90 = samples[min(len(samples) - 1, round(0.9 * (len(samples) - 1)))]
    return Timing(statistics.median(samples), p90, statistics.fmean(samples), len(samples))
