"""Partial parameter transfer vs training from scratch over the paper's factors: the shared-signal strength, the
upstream sample size N₁ and the downstream sample size N₂ (and the inherited fraction α).

- `synthetic`: the paper's data model (transfer_model.py) in its negative-transfer corner (‖v₁‖ = 4,
  ‖v₂‖ = 1.5, d = 1000, m = 20): sweep ‖u‖ × N₁ × N₂ × α; the gain = 0 contour over (‖u‖, N₁) is where
  transfer stops paying.
- real data (our analogue, not from the paper): two binary tasks on one data set. Downstream: class a vs b
  with N₂ training images. Upstream: N₁ blends s·(a-or-b image) + (1 − s)·(c-or-d image) with aligned labels
  (a, c → +1; b, d → −1), so s plays the shared-signal strength and the c-vs-d content the upstream-specific
  v₁. At s = 1 the upstream task *is* the downstream task (pre-training on the target), so s = 1 is a
  reference, not evidence that transfer between different tasks helps. Images are centred, scaled and cut into
  their 4 quadrants as patches for the same two-layer ReLU CNN; test on the held-out a/b images.

Pairing: for one (seed, strength) every N₁ and N₂ shares the directions, the downstream samples (nested: the
first N₂ of one draw), the test set and the downstream initialisation; upstream samples are nested too. So
α = 0 (scratch) is the same model for every N₁, and gains are paired differences.
"""

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from refine_control.models.transfer import transfer_parameters
from refine_control.weaklabel.datasets import ImageDataset
from refine_control.weaklabel.jobs import Job, RunResult, cached_dataset, fmt_value, generator, stopwatch
from refine_control.weaklabel.report import Record, mean_std, zero_crossing
from refine_control.weaklabel.transfer_model import (
    GDConfig,
    TwoLayerReLUCNN,
    make_directions,
    sample_task,
    sign_accuracy,
    train_gd,
)

logger = logging.getLogger(__name__)

GROUP = "weaklabel/transfer"
# (downstream +1, downstream −1, upstream-only +1, upstream-only −1), fixed before any run
PAIRS = {"fashion-mnist": (2, 4, 5, 8), "mnist": (4, 9, 0, 1), "digits": (4, 9, 0, 1)}


@dataclass(frozen=True)
class TransferSettings:
    alphas: tuple[float, ...] = (0.0, 0.5, 1.0)
    shared: tuple[float, ...] = (0.0, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)  # ‖u‖ (synthetic)
    blend: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)  # s (real data); s = 1 is pre-training on the target
    n_upstream: tuple[int, ...] = (100, 300, 1000, 3000)  # N₁
    n_downstream: tuple[int, ...] = (10, 20, 40, 80)  # N₂
    upstream_norm: float = 4.0  # ‖v₁‖
    downstream_norm: float = 1.5  # ‖v₂‖
    dim: int = 1000
    filters: int = 20  # m per class
    init_std: float = 0.01  # σ₀
    noise_std: float = 1.0  # σ_p (both tasks)
    n_test: int = 2000  # synthetic only
    gd: GDConfig = field(default_factory=lambda: GDConfig(lr=0.1, steps=300))


def default_settings(dataset: str) -> TransferSettings:
    return TransferSettings()


def quick_settings(dataset: str) -> TransferSettings:
    return TransferSettings(
        alphas=(0.0, 1.0), shared=(0.0, 2.0), blend=(0.0, 1.0), n_upstream=(50,), n_downstream=(10, 20), dim=200,
        n_test=200, gd=GDConfig(steps=30),
    )  # fmt: skip


def _downstream(
    up: TwoLayerReLUCNN, dim: int, x2: torch.Tensor, y2: torch.Tensor, xt: torch.Tensor, yt: torch.Tensor,
    s: TransferSettings, seed: int,
) -> tuple[dict[str, dict[str, float]], dict[str, float]]:  # fmt: skip
    """For every N₂ (first N₂ samples) and α: fresh init (same for every N₁), inherit α of the filters, GD.

    Returns ({N₂: {α: test accuracy}}, {α: inherited share of elements})."""
    acc: dict[str, dict[str, float]] = {}
    inherited: dict[str, float] = {}
    for n2 in s.n_downstream:
        acc[str(n2)] = {}
        for ai, alpha in enumerate(s.alphas):
            g = generator(seed, 40 + 7 * ai + 1000 * n2)  # init and filter choice: independent of N₁
            down = TwoLayerReLUCNN(dim, s.filters, s.init_std, g)
            report = transfer_parameters(up, down, fraction=alpha, generator=g, exact=True)
            train_gd(down, x2[:n2], y2[:n2], s.gd)
            acc[str(n2)][fmt_value(alpha)] = sign_accuracy(down, xt, yt)
            inherited[fmt_value(alpha)] = report.fraction_copied
    return acc, inherited


def _config(dataset: str, strength: float, n1: int, s: TransferSettings, dim: int) -> dict[str, Any]:
    return {
        "experiment": "transfer", "dataset": dataset, "strength": strength, "n_upstream": n1,
        "n_downstream": list(s.n_downstream), "alphas": list(s.alphas), "dim": dim, "filters": s.filters,
        "init_std": s.init_std, "noise_std": s.noise_std, "gd_lr": s.gd.lr, "gd_steps": s.gd.steps,
        "upstream_norm": s.upstream_norm if dataset == "synthetic" else None,
        "downstream_norm": s.downstream_norm if dataset == "synthetic" else None,
        "pretraining_on_target": dataset != "synthetic" and strength == 1.0,
    }  # fmt: skip


def run_synthetic(seed: int, shared: float, s: TransferSettings) -> list[RunResult]:
    """One (seed, ‖u‖): an upstream model per N₁, each fine-tuned for every N₂ and α."""
    g_dir = generator(seed, 31 + int(1000 * shared))
    dirs = make_directions(
        s.dim, shared=shared, upstream=s.upstream_norm, downstream=s.downstream_norm, generator=g_dir
    )
    g_data = generator(seed, 32 + int(1000 * shared))
    x1_all, y1_all, _ = sample_task(max(s.n_upstream), dirs.u, dirs.v1, noise_std=s.noise_std, generator=g_data)
    x2, y2, _ = sample_task(max(s.n_downstream), dirs.u, dirs.v2, noise_std=s.noise_std, generator=g_data)
    xt, _, yt = sample_task(s.n_test, dirs.u, dirs.v2, noise_std=s.noise_std, generator=g_data)
    out = []
    for n1 in s.n_upstream:
        with stopwatch() as t:
            up = TwoLayerReLUCNN(s.dim, s.filters, s.init_std, generator(seed, 33))
            loss = train_gd(up, x1_all[:n1], y1_all[:n1], s.gd)
            acc, inherited = _downstream(up, s.dim, x2, y2, xt, yt, s, seed)
        metrics = {"test_acc": acc, "inherited": inherited, "upstream_train_loss": loss}
        name = f"synthetic_u{fmt_value(shared)}_n1-{n1}_s{seed}"
        out.append(RunResult(name, seed, _config("synthetic", shared, n1, s, s.dim), metrics, t()))
    return out


def quadrant_patches(img: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) → (N, 4, H/2 · W/2): the four quadrants as patches."""
    n, _, h, w = img.shape
    return img[:, 0].unfold(1, h // 2, h // 2).unfold(2, w // 2, w // 2).reshape(n, 4, -1)


def _pick(
    x: torch.Tensor, y: torch.Tensor, pos: int, neg: int, labels: torch.Tensor, g: torch.Generator
) -> torch.Tensor:
    """One image per ±1 label: a random image of class `pos` for +1, of class `neg` for −1."""
    ip, ineg = torch.nonzero(y == pos).flatten(), torch.nonzero(y == neg).flatten()
    draw_p = ip[torch.randint(len(ip), (len(labels),), generator=g)]
    draw_n = ineg[torch.randint(len(ineg), (len(labels),), generator=g)]
    return x[torch.where(labels > 0, draw_p, draw_n)]


def run_real(
    dataset: str, seed: int, blend: float, s: TransferSettings, ds: ImageDataset | None = None
) -> list[RunResult]:
    ds = ds or cached_dataset(dataset, seed, None)
    a, b, c, d = PAIRS[dataset]
    x, y = ds.train.x, ds.train.y
    sel = (y == a) | (y == b) | (y == c) | (y == d)
    mean, scale = x[sel].mean(0), x[sel].std()

    def prep(img: torch.Tensor) -> torch.Tensor:
        return quadrant_patches((img - mean) / scale)

    g_up = generator(seed, 32 + int(1000 * blend))
    y1 = torch.randint(0, 2, (max(s.n_upstream),), generator=g_up).float() * 2 - 1
    x1 = prep(blend * _pick(x, y, a, b, y1, g_up) + (1 - blend) * _pick(x, y, c, d, y1, g_up))
    g_down = generator(seed, 35)  # the downstream task does not depend on the blend
    y2 = torch.randint(0, 2, (max(s.n_downstream),), generator=g_down).float() * 2 - 1
    x2 = prep(_pick(x, y, a, b, y2, g_down))
    test = (ds.test.y == a) | (ds.test.y == b)
    xt, yt = prep(ds.test.x[test]), (ds.test.y[test] == a).float() * 2 - 1
    dim = x1.shape[-1]
    out = []
    for n1 in s.n_upstream:
        with stopwatch() as t:
            up = TwoLayerReLUCNN(dim, s.filters, s.init_std, generator(seed, 33))
            loss = train_gd(up, x1[:n1], y1[:n1], s.gd)
            acc, inherited = _downstream(up, dim, x2, y2, xt, yt, s, seed)
        metrics = {"test_acc": acc, "inherited": inherited, "upstream_train_loss": loss}
        name = f"{dataset}_s{fmt_value(blend)}_n1-{n1}_s{seed}"
        out.append(RunResult(name, seed, _config(dataset, blend, n1, s, dim), metrics, t()))
    return out


def plan(dataset: str, seeds: list[int], s: TransferSettings) -> list[Job]:
    """One job per (seed, strength); tags: seed, strength."""
    if dataset == "synthetic":
        return [
            Job(
                f"synthetic s={seed} |u|={u}",
                lambda seed=seed, u=u: run_synthetic(seed, u, s),
                {"seed": seed, "strength": fmt_value(u)},
            )
            for seed in seeds
            for u in s.shared
        ]
    if dataset not in PAIRS:
        raise ValueError(f"no class pairs defined for {dataset!r}")
    return [
        Job(
            f"{dataset} s={seed} blend={b}",
            lambda seed=seed, b=b: run_real(dataset, seed, b, s),
            {"seed": seed, "strength": fmt_value(b)},
        )
        for seed in seeds
        for b in s.blend
    ]


def expand(records: list[Record]) -> list[Record]:
    """One flat row per (run, N₂, α) with `acc` and the paired `gain` over α = 0 of the same run and N₂."""
    rows = []
    for r in records:
        for n2, by_alpha in r["test_acc"].items():
            scratch = by_alpha.get("0")
            for alpha, acc in by_alpha.items():
                rows.append(
                    {"dataset": r["dataset"], "strength": r["strength"], "n_upstream": r["n_upstream"],
                     "n_downstream": int(n2), "alpha": float(alpha), "seed": r["seed"], "acc": acc,
                     "gain": acc - scratch if scratch is not None else None}
                )  # fmt: skip
    return rows


def gain_grid(
    rows: list[Record], dataset: str, n_downstream: int, alpha: float
) -> tuple[list[float], list[int], dict[tuple[float, int], tuple[float, float, int]]]:
    """(strengths, N₁ values, {(strength, N₁): (mean gain, std, n seeds)}) at one N₂ and α."""
    sel = [r for r in rows if r["dataset"] == dataset and r["n_downstream"] == n_downstream and r["alpha"] == alpha]
    strengths = sorted({r["strength"] for r in sel})
    n1s = sorted({r["n_upstream"] for r in sel})
    cells = {}
    for u in strengths:
        for n1 in n1s:
            gains = [r["gain"] for r in sel if r["strength"] == u and r["n_upstream"] == n1]
            if gains:
                m, sd = mean_std(gains)
                cells[(u, n1)] = (m, sd, len(gains))
    return strengths, n1s, cells


def tables(records: list[Record]) -> list[tuple[str, list[Record], list[str]]]:
    rows = expand(records)
    out = []
    for dataset in sorted({r["dataset"] for r in rows}):
        n2 = 20 if any(r["n_downstream"] == 20 for r in rows) else min(r["n_downstream"] for r in rows)
        alpha = max(r["alpha"] for r in rows)
        strengths, n1s, cells = gain_grid(rows, dataset, n2, alpha)
        table = []
        for u in strengths:
            row: Record = {"strength": u}
            for n1 in n1s:
                if (u, n1) in cells:
                    m, sd, n = cells[(u, n1)]
                    row[f"N1={n1}"] = {"mean": m, "std": sd, "n": n}
            table.append(row)
        crossing: Record = {"strength": "gain=0 at"}
        for n1 in n1s:
            z = zero_crossing([(u, cells[(u, n1)][0]) for u in strengths if (u, n1) in cells])
            crossing[f"N1={n1}"] = "—" if z is None or math.isnan(z) else f"{z:.2f}"
        table.append(crossing)
        title = f"{dataset}: gain of α={alpha:g} over scratch at N2={n2}, by strength (rows) and N1 (columns)"
        out.append((title, table, ["strength", *(f"N1={n}" for n in n1s)]))
    return out
