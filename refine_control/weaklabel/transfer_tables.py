"""Tables of the parameter-transfer experiment (results/weaklabel/transfer/), registered on import.

`tables.py` imports this module (its headline row reads `transfer_rows`), so `benchmarks/tables.py` finds these.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any

from refine_control.results import ResultsError, Table, markdown_table, provenance, register_table
from refine_control.weaklabel.report import mean_std, zero_crossing
from refine_control.weaklabel.table_cells import Row, flat_rows, fmt_g, pm, select

TRANSFER = "weaklabel/transfer"


def transfer_rows(root: Path) -> tuple[list[Row], list[dict[str, Any]]]:
    rows, files = flat_rows(TRANSFER, root)
    out = []
    for r in rows:
        for n2, by_alpha in r["test_acc"].items():
            for alpha, acc in by_alpha.items():
                out.append(
                    {"dataset": r["dataset"], "strength": r["strength"], "n1": r["n_upstream"], "n2": int(n2),
                     "alpha": float(alpha), "seed": r["seed"], "acc": acc, "gain": acc - by_alpha["0"]}
                )  # fmt: skip
    return out, files


def _gain_cell(rows: list[Row]) -> str:
    gains = [r["gain"] for r in rows]
    return f"{pm(gains, signed=True)}" if gains else "—"


def _require(sel: list[Row], ds: str, what: str) -> list[Row]:
    """`sel`, or ResultsError when no transfer run covers that dataset and setting."""
    if not sel:
        raise ResultsError(f"no result files in results/{TRANSFER}/ for dataset {ds!r} at {what}")
    return sel


def _strength_label(ds: str, s: float) -> str:
    if ds == "synthetic":
        return fmt_g(s)
    return f"{fmt_g(s)} (pre-training on the target)" if s == 1.0 else fmt_g(s)


def _contour(ds: str, n2: int, alpha: float) -> Callable[[Path], Table]:
    def render(root: Path) -> Table:
        rows, files = transfer_rows(root)
        sel = _require(select(rows, dataset=ds, n2=n2, alpha=alpha), ds, f"N₂ = {n2}, α = {fmt_g(alpha)}")
        strengths = sorted({r["strength"] for r in sel})
        n1s = sorted({r["n1"] for r in sel})
        out = []
        for s in strengths:
            out.append([_strength_label(ds, s), *(_gain_cell(select(sel, strength=s, n1=n1)) for n1 in n1s)])
        crossing = []
        for n1 in n1s:
            pts = []
            for s in strengths:
                if ds != "synthetic" and s == 1.0:
                    continue  # s = 1 is the target task itself: not part of the transfer-between-tasks contour
                g = [r["gain"] for r in select(sel, strength=s, n1=n1)]
                if g:
                    pts.append((s, mean_std(g)[0]))
            z = zero_crossing(pts)
            crossing.append(
                "never < 0" if z is None and pts and all(g >= 0 for _, g in pts) else "—" if z is None else f"{z:.2f}"
            )
        out.append(["**gain = 0 at**", *crossing])
        name = "‖u‖" if ds == "synthetic" else "blend s"
        header = [f"{name} \\ N₁", *(str(n) for n in n1s)]
        used = [f for f in files if f["config"]["dataset"] == ds]
        caption = (
            f"Gain of α = {fmt_g(alpha)} over scratch (same seed, same downstream data and init), N₂ = {n2}. "
            f"The last row interpolates the {name} above which the mean gain stays ≥ 0. " + provenance(used)
        )
        return Table(markdown_table(header, out), caption)

    return render


def _by_n2(ds: str, n1: int, alpha: float) -> Callable[[Path], Table]:
    def render(root: Path) -> Table:
        rows, files = transfer_rows(root)
        sel = _require(select(rows, dataset=ds, n1=n1, alpha=alpha), ds, f"N₁ = {n1}, α = {fmt_g(alpha)}")
        n2s = sorted({r["n2"] for r in sel})
        out = []
        for s in sorted({r["strength"] for r in sel}):
            scratch = [
                pm([r["acc"] for r in select(rows, dataset=ds, n1=n1, alpha=0.0, n2=n2, strength=s)])
                for n2 in (n2s[0], n2s[-1])
            ]
            out.append([_strength_label(ds, s), *(_gain_cell(select(sel, strength=s, n2=n2)) for n2 in n2s), *scratch])
        name = "‖u‖" if ds == "synthetic" else "blend s"
        header = [f"{name} \\ N₂", *(str(n) for n in n2s), f"scratch acc, N₂={n2s[0]}", f"scratch acc, N₂={n2s[-1]}"]
        used = [f for f in files if f["config"]["dataset"] == ds]
        caption = f"Gain of α = {fmt_g(alpha)} over scratch at N₁ = {n1}, by downstream sample size. " + provenance(
            used
        )
        return Table(markdown_table(header, out), caption)

    return render


@register_table("weaklabel-transfer-coverage")
def transfer_coverage(root: Path) -> Table:
    """Which seeds each strength has, so a mean over fewer seeds than the design is visible."""
    rows, files = transfer_rows(root)
    out = []
    for ds in sorted({r["dataset"] for r in rows}):
        for s in sorted({r["strength"] for r in rows if r["dataset"] == ds}):
            sel = select(rows, dataset=ds, strength=s)
            n1s = sorted({r["n1"] for r in sel})
            complete = [
                seed
                for seed in sorted({r["seed"] for r in sel})
                if {r["n1"] for r in select(sel, seed=seed)} == set(n1s)
            ]
            runs = [f for f in files if f["config"]["dataset"] == ds and f["config"]["strength"] == s]
            out.append(
                [ds, _strength_label(ds, s), ", ".join(map(str, n1s)), ", ".join(map(str, complete)), str(len(runs))]
            )
    header = ["data", "‖u‖ or blend s", "N₁", "seeds with every N₁", "result files"]
    caption = (
        "Each result file is one (strength, N₁, seed) run over every N₂ and α. Means in the transfer tables are "
        "over the seeds listed here. " + provenance(files)
    )
    return Table(markdown_table(header, out), caption)


register_table("weaklabel-transfer-contour-synthetic")(_contour("synthetic", 20, 1.0))
register_table("weaklabel-transfer-contour-synthetic-half")(_contour("synthetic", 20, 0.5))
register_table("weaklabel-transfer-n2-synthetic")(_by_n2("synthetic", 1000, 1.0))
register_table("weaklabel-transfer-contour-mnist")(_contour("mnist", 20, 1.0))
register_table("weaklabel-transfer-contour-fashion-mnist")(_contour("fashion-mnist", 20, 1.0))
register_table("weaklabel-transfer-n2-mnist")(_by_n2("mnist", 1000, 1.0))
register_table("weaklabel-transfer-n2-fashion-mnist")(_by_n2("fashion-mnist", 1000, 1.0))
