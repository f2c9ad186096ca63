"""Cells and row selection shared by the weak-label tables (`tables.py`, `transfer_tables.py`)."""

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from refine_control.results import read_results
from refine_control.weaklabel.report import mean_std

Row = dict[str, Any]


def flat_rows(group: str, root: Path) -> tuple[list[Row], list[dict[str, Any]]]:
    files = read_results(group, root)
    return [{**f["config"], "seed": f["seed"], **f["metrics"]} for f in files], files


def pm(values: Iterable[float | None], digits: int = 3, signed: bool = False) -> str:
    """'mean ± std' (sample std), or the single value; '—' when there is none."""
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return "—"
    m, sd = mean_std(vals)
    fmt = f"{{:{'+' if signed else ''}.{digits}f}}"
    return fmt.format(m) if len(vals) == 1 else f"{fmt.format(m)} ± {sd:.{digits}f}"


def wins(values: Sequence[float]) -> str:
    """'k/n' seeds with a positive value."""
    return f"{sum(1 for v in values if v > 0)}/{len(values)}"


def fmt_g(v: float) -> str:
    """A number in its shortest form (`0.5`, `1`, `1e-06`)."""
    return f"{v:g}"


def select(rows: list[Row], **eq: Any) -> list[Row]:
    return [r for r in rows if all(r.get(k) == v for k, v in eq.items())]


def by_seed(rows: list[Row]) -> dict[int, Row]:
    return {r["seed"]: r for r in rows}


def paired(a: list[Row], b: list[Row], key: str) -> list[float]:
    """a[key] − b[key] for every seed present in both."""
    bb = by_seed(b)
    return [r[key] - bb[r["seed"]][key] for r in a if r["seed"] in bb]
