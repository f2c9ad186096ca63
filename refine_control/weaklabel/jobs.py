"""Experiments are planned as a list of jobs (one per seed × setting) so the CLI can show progress, split seeds
across processes, and write one result file per run; tests can run a single job.

A job returns `RunResult`s: what was run (`config`), what was measured (`metrics`), its seed and wall time. The
CLI prints them as tables (`flat()` records through `report.aggregate`) and, with `--results-dir`, writes each
one as a result file (refine_control.results) named `name`.
"""

import functools
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from refine_control.weaklabel.datasets import ImageDataset, load_dataset
from refine_control.weaklabel.report import Record


@dataclass
class RunResult:
    name: str  # file name stem under the experiment's results group
    seed: int | None
    config: dict[str, Any]
    metrics: dict[str, Any]
    wall_s: float = 0.0
    notes: str | None = None

    def flat(self) -> Record:
        """config + seed + metrics in one dict (metrics win on a clash), for aggregation."""
        return {**self.config, "seed": self.seed, **self.metrics}


@dataclass(frozen=True)
class Job:
    name: str
    run: Callable[[], list[RunResult]]
    tags: dict[str, Any] = field(default_factory=dict)


@contextmanager
def stopwatch() -> Iterator[Callable[[], float]]:
    """`with stopwatch() as elapsed: ...; elapsed()` → seconds since entering."""
    start = time.perf_counter()
    yield lambda: time.perf_counter() - start


def flat_records(results: list[RunResult]) -> list[Record]:
    return [r.flat() for r in results]


@functools.lru_cache(maxsize=4)
def cached_dataset(
    name: str, seed: int, max_samples: int | None, test_samples: int | None = None, downsample: int = 1
) -> ImageDataset:
    """`load_dataset`, memoised so the jobs of one seed share one split."""
    return load_dataset(name, seed=seed, max_samples=max_samples, test_samples=test_samples, downsample=downsample)


def generator(seed: int, salt: int = 0) -> torch.Generator:
    """A CPU generator for one job; `salt` separates streams (data corruption vs training) of the same seed."""
    return torch.Generator().manual_seed(1_000_003 * seed + salt)


def fmt_value(v: float) -> str:
    """A compact, file-name-safe rendering of a grid value: 0.5 → 0.5, 1.0 → 1, 0.005 → 0.005."""
    return f"{v:g}"
