"""Progress bars that suit both a terminal and a log file."""

import sys
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm


def progress_bar(iterable: Iterable[Any] | None = None, *, total: int | None = None, **kwargs: Any) -> tqdm:
    """`tqdm` that redraws in place on a terminal; when stderr is a file or a pipe (CI, `make demo > log`) it
    writes an update only every 5% of the work, so a long run leaves about twenty lines instead of one per step."""
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if not sys.stderr.isatty() and total:
        kwargs.setdefault("miniters", max(1, total // 20))
        kwargs.setdefault("mininterval", 0)
        kwargs.setdefault("maxinterval", float("inf"))  # tqdm would otherwise lower miniters again after 10 s
    return tqdm(iterable, total=total, **kwargs)
