"""Lazy validation: undecodable samples are skipped, counted and named, and stop the run only past a threshold.

At a million images one bad file must not stop a run (nor must decoding every image up front delay it by hours), but
a dataset that is mostly broken must. The limit is a fraction of the dataset's rows when its length is known, of
the samples drawn so far when streaming (judged once enough samples were drawn for the fraction to mean something).
Each process judges its own samples and names them in `logs/bad_files.txt` (`bad_files.rankN.txt` for rank N > 0).
"""

import logging
import math
from pathlib import Path

from refine_control.atomic import write_text
from refine_control.errors import RefineError

logger = logging.getLogger(__name__)


class BadDataPolicy:
    def __init__(self, logs: Path, rank: int, max_fraction: float, dataset_rows: int | None) -> None:
        self.path = logs / ("bad_files.txt" if rank == 0 else f"bad_files.rank{rank}.txt")
        self.max_fraction, self.dataset_rows = max_fraction, dataset_rows
        self.drawn = 0
        self.failures = 0
        self.names: dict[str, str] = {}  # key → reason, first seen first

    def update(self, drawn: int, bad: list[tuple[str, str]]) -> None:
        """Count a micro-batch's draws and failures; raise when the failures pass the limit."""
        self.drawn += drawn
        if not bad:
            return
        self.failures += len(bad)
        new = [(k, r) for k, r in bad if k not in self.names]
        for key, reason in new:
            self.names[key] = reason
            logger.warning("skipped an undecodable sample: %s (%s)", key, reason)
        if new:
            write_text(self.path, "".join(f"{k}\t{r}\n" for k, r in self.names.items()))
        if self.exceeded():
            raise RefineError(
                f"{self.describe()}: more than --max-bad-fraction {self.max_fraction:g} of the samples cannot be "
                f"decoded (named in {self.path})",
                hint="repair or remove those files, or raise --max-bad-fraction",
            )

    def exceeded(self) -> bool:
        if self.dataset_rows is not None:
            return len(self.names) > self.max_fraction * self.dataset_rows
        enough = self.drawn >= math.ceil(1 / self.max_fraction) if self.max_fraction > 0 else True
        return enough and self.failures > self.max_fraction * self.drawn

    def describe(self) -> str:
        if self.dataset_rows is not None:
            return f"{len(self.names)} of {self.dataset_rows} rows are undecodable"
        return f"{self.failures} of {self.drawn} samples drawn were undecodable"
