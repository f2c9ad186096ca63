"""Aggregate per-seed result records into mean ± std tables (markdown, readable in a terminal too)."""

import math
from collections.abc import Iterable, Sequence
from typing import Any

Record = dict[str, Any]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value); NaNs are ignored."""
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return float("nan"), float("nan")
    mean = sum(vals) / len(vals)
    if len(vals) == 1:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)
    return mean, math.sqrt(var)


def aggregate(records: Iterable[Record], keys: Sequence[str], metrics: Sequence[str]) -> list[Record]:
    """Group records by `keys` (first-seen order) and replace each metric by (mean, std, n)."""
    groups: dict[tuple[Any, ...], list[Record]] = {}
    for rec in records:
        groups.setdefault(tuple(rec.get(k) for k in keys), []).append(rec)
    out = []
    for key, recs in groups.items():
        row: Record = dict(zip(keys, key, strict=True))
        for m in metrics:
            mean, std = mean_std([r[m] for r in recs if m in r])
            row[m] = {"mean": mean, "std": std, "n": sum(1 for r in recs if m in r)}
        out.append(row)
    return out


def _cell(value: Any, digits: int) -> str:
    if isinstance(value, dict) and "mean" in value:
        if math.isnan(value["mean"]):
            return "—"
        if value["n"] > 1:
            return f"{value['mean']:.{digits}f} ± {value['std']:.{digits}f}"
        return f"{value['mean']:.{digits}f}"
    if isinstance(value, float):
        return "—" if math.isnan(value) else f"{value:.{digits}g}"
    return str(value)


def markdown_table(rows: Sequence[Record], columns: Sequence[str], *, digits: int = 3) -> str:
    """Render `rows` as a markdown table with the given column order (cells padded for terminals)."""
    cells = [[_cell(r.get(c, ""), digits) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += ["| " + " | ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) + " |" for row in cells]
    return "\n".join(lines)


def pivot(rows: Sequence[Record], index: Sequence[str], column: str, value: str) -> tuple[list[Record], list[str]]:
    """Turn aggregated rows into one row per `index` tuple with one column per distinct `column` value."""
    out: dict[tuple[Any, ...], Record] = {}
    cols: list[str] = []
    for r in rows:
        key = tuple(r[i] for i in index)
        name = str(r[column])
        if name not in cols:
            cols.append(name)
        out.setdefault(key, dict(zip(index, key, strict=True)))[name] = r[value]
    return list(out.values()), [*index, *cols]


def zero_crossing(points: Sequence[tuple[float, float]]) -> float | None:
    """The x above which the piecewise-linear curve through `points` (x, y) stays ≥ 0: linear interpolation at
    the last sign change from < 0 to ≥ 0. None when y is never negative, or is still negative at the largest x."""
    pts = sorted(points)
    if not pts or all(g >= 0 for _, g in pts) or pts[-1][1] < 0:
        return None
    i = max(j for j, (_, g) in enumerate(pts) if g < 0)
    (x0, g0), (x1, g1) = pts[i], pts[i + 1]
    return x0 + (0 - g0) * (x1 - x0) / (g1 - g0)
