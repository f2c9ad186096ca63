"""Partial parameter transfer vs training from scratch across shared-signal strength.

- `synthetic`: the paper's data model (transfer_model.py): sweep ‖u‖ with a strong upstream-specific signal
  (‖v₁‖ = 4, ‖v₂‖ = 1.5, N₁ = 1000, N₂ = 20, d = 1000, m = 20; spec §3.1), inherit α of the filters.
- real data (our analogue, not from the paper): two binary tasks on one dataset. Downstream: class a vs b with
  N₂ training images. Upstream: N₁ blends s·(a-or-b image) + (1 − s)·(c-or-d image) with aligned labels
  (a, c → +1; b, d → −1), so s plays the role of the shared-signal strength ‖u‖ and the c-vs-d content that
  of the upstream-specific v₁. Images are centred, scaled, and cut into 4 non-overlapping patches (the quadrants)
  for the same two-layer ReLU CNN. Test accuracy is on the held-out a/b test images.
"""

import logging
from dataclasses import dataclass, field

import torch

from refine_control.models.transfer import transfer_parameters
from refine_control.weaklabel.datasets import ImageDataset
from refine_control.weaklabel.jobs import Job, cached_dataset, generator
from refine_control.weaklabel.report import Record, aggregate, pivot
from refine_control.weaklabel.transfer_model import (
    GDConfig,
    TwoLayerReLUCNN,
    make_directions,
    sample_task,
    sign_accuracy,
    train_gd,
)

logger = logging.getLogger(__name__)

# (downstream +1, downstream −1, upstream-only +1, upstream-only −1), fixed before any run
PAIRS = {"fashion-mnist": (2, 4, 5, 8), "mnist": (4, 9, 0, 1), "digits": (4, 9, 0, 1)}


@dataclass(frozen=True)
class TransferSettings:
    alphas: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    shared: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0)  # ‖u‖ (synthetic) — real data uses `blend`
    blend: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)  # s (real data)
    upstream_norm: float = 4.0  # ‖v₁‖
    downstream_norm: float = 1.5  # ‖v₂‖
    dim: int = 1000
    filters: int = 20  # m per class
    init_std: float = 0.01  # σ₀
    noise_std: float = 1.0  # σ_p (both tasks)
    n_upstream: int = 1000  # N₁
    n_downstream: int = 20  # N₂
    n_test: int = 2000  # synthetic only
    gd: GDConfig = field(default_factory=lambda: GDConfig(lr=0.1, steps=300))


def _finetune_all(
    up: TwoLayerReLUCNN, dim: int, x2: torch.Tensor, y2: torch.Tensor, xt: torch.Tensor, yt: torch.Tensor,
    s: TransferSettings, g: torch.Generator,
) -> dict[float, tuple[float, float]]:  # fmt: skip
    """α → (test accuracy, inherited share of elements); α = 0 is the scratch baseline (same init stream)."""
    out = {}
    for alpha in s.alphas:
        down = TwoLayerReLUCNN(dim, s.filters, s.init_std, g)
        report = transfer_parameters(up, down, fraction=alpha, generator=g, exact=True)
        train_gd(down, x2, y2, s.gd)
        out[alpha] = (sign_accuracy(down, xt, yt), report.fraction_copied)
    return out


def run_synthetic(seed: int, shared: float, s: TransferSettings) -> list[Record]:
    g = generator(seed, 31)
    dirs = make_directions(s.dim, shared=shared, upstream=s.upstream_norm, downstream=s.downstream_norm, generator=g)
    x1, y1, _ = sample_task(s.n_upstream, dirs.u, dirs.v1, noise_std=s.noise_std, generator=g)
    x2, y2, _ = sample_task(s.n_downstream, dirs.u, dirs.v2, noise_std=s.noise_std, generator=g)
    xt, _, yt = sample_task(s.n_test, dirs.u, dirs.v2, noise_std=s.noise_std, generator=g)
    up = TwoLayerReLUCNN(s.dim, s.filters, s.init_std, g)
    train_gd(up, x1, y1, s.gd)
    return _records("synthetic", seed, shared, _finetune_all(up, s.dim, x2, y2, xt, yt, s, g))


def _records(dataset: str, seed: int, strength: float, res: dict[float, tuple[float, float]]) -> list[Record]:
    scratch = res[min(res)][0]
    return [
        {"dataset": dataset, "seed": seed, "strength": strength, "alpha": a, "test_acc": acc,
         "inherited": share, "gain": acc - scratch}
        for a, (acc, share) in res.items()
    ]  # fmt: skip


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
) -> list[Record]:
    ds = ds or cached_dataset(dataset, seed, None)
    a, b, c, d = PAIRS[dataset]
    g = generator(seed, 32)
    x, y = ds.train.x, ds.train.y
    sel = (y == a) | (y == b) | (y == c) | (y == d)
    mean, scale = x[sel].mean(0), x[sel].std()

    def prep(img: torch.Tensor) -> torch.Tensor:
        return quadrant_patches((img - mean) / scale)

    y1 = torch.randint(0, 2, (s.n_upstream,), generator=g).float() * 2 - 1
    shared_part = _pick(x, y, a, b, y1, g)
    specific_part = _pick(x, y, c, d, y1, g)
    x1 = prep(blend * shared_part + (1 - blend) * specific_part)
    y2 = torch.randint(0, 2, (s.n_downstream,), generator=g).float() * 2 - 1
    x2 = prep(_pick(x, y, a, b, y2, g))
    test = (ds.test.y == a) | (ds.test.y == b)
    xt, yt = prep(ds.test.x[test]), (ds.test.y[test] == a).float() * 2 - 1
    dim = x1.shape[-1]
    up = TwoLayerReLUCNN(dim, s.filters, s.init_std, g)
    train_gd(up, x1, y1, s.gd)
    return _records(dataset, seed, blend, _finetune_all(up, dim, x2, y2, xt, yt, s, g))


def plan(dataset: str, seeds: list[int], s: TransferSettings) -> list[Job]:
    if dataset == "synthetic":
        return [
            Job(f"synthetic seed={seed} |u|={u}", lambda seed=seed, u=u: run_synthetic(seed, u, s))
            for seed in seeds
            for u in s.shared
        ]
    if dataset not in PAIRS:
        raise ValueError(f"no class pairs defined for {dataset!r}")
    return [
        Job(f"{dataset} seed={seed} s={b}", lambda seed=seed, b=b: run_real(dataset, seed, b, s))
        for seed in seeds
        for b in s.blend
    ]


def tables(records: list[Record]) -> list[tuple[str, list[Record], list[str]]]:
    acc = aggregate(records, ["dataset", "strength", "alpha"], ["test_acc"])
    rows, cols = pivot(acc, ["dataset", "strength"], "alpha", "test_acc")
    top = max(r["alpha"] for r in records)
    gains = aggregate([r for r in records if r["alpha"] == top], ["dataset", "strength"], ["gain"])
    for row, gain in zip(rows, gains, strict=True):
        row[f"gain α={top}"] = gain["gain"]
    cols = [cols[0], cols[1], *(f"α={c}" for c in cols[2:]), f"gain α={top}"]
    for row in rows:
        for a in list(row):
            if a not in ("dataset", "strength") and not a.startswith(("gain", "α")):
                row[f"α={a}"] = row.pop(a)
    name = "strength = ‖u‖ (synthetic) or blend s (real data)"
    return [(f"downstream test accuracy by inherited fraction α (α = 0 is scratch); {name}", rows, cols)]
