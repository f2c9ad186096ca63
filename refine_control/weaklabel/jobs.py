"""Experiments are planned as a list of jobs (one per seed × setting) so the CLI can show progress and tests can
run a single one. Each job returns result records (flat dicts) that `report.aggregate` turns into tables."""

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from refine_control.weaklabel.datasets import ImageDataset, load_dataset
from refine_control.weaklabel.report import Record


@dataclass(frozen=True)
class Job:
    name: str
    run: Callable[[], list[Record]]


@functools.lru_cache(maxsize=4)
def cached_dataset(name: str, seed: int, max_samples: int | None) -> ImageDataset:
    """`load_dataset`, memoised so the jobs of one seed share one split."""
    return load_dataset(name, seed=seed, max_samples=max_samples)


def generator(seed: int, salt: int = 0) -> torch.Generator:
    """A CPU generator for one job; `salt` separates streams (data corruption vs training) of the same seed."""
    return torch.Generator().manual_seed(1_000_003 * seed + salt)
