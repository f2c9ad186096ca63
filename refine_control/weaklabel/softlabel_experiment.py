"""Student accuracy against Δ + γ for biased soft labels (spec B7: E1 synthetic SBT, E2 PLL, E3 additive
noise, E4 incomplete supervision), with two students per soft-label matrix: soft-label cross-entropy (what KD
does) and the top-k partial loss (what the theorem is about). Validation and test labels are clean.
"""

import logging
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from refine_control.weaklabel.datasets import ImageDataset, Split
from refine_control.weaklabel.jobs import Job, cached_dataset, generator
from refine_control.weaklabel.nets import build_mlp
from refine_control.weaklabel.partial_label import weighted_ce
from refine_control.weaklabel.report import Record, aggregate
from refine_control.weaklabel.soft_labels import (
    Indicators,
    additive_noise_soft_labels,
    best_k_indicators,
    biased_soft_labels,
    partial_label_soft_labels,
    set_indicators,
    topk_partial_loss,
    topk_sets,
)
from refine_control.weaklabel.training import FitConfig, accuracy, fit, predict_logits

logger = logging.getLogger(__name__)

# (Δ*, ρ, confuser rank) for the synthetic biased teacher; the last row puts the confuser low in the ranking.
BIASED_GRID = (
    (0.0, 0.0, 1),
    (0.2, 0.0, 1),
    (0.4, 0.0, 1),
    (0.6, 0.0, 1),
    (0.3, 0.6, 1),
    (0.0, 0.6, 1),
    (0.0, 1.0, 1),
    (0.0, 1.0, 3),
)
PLL_GRID = ((0.1, 0.1), (0.1, 0.3), (0.1, 0.5), (0.3, 0.3), (0.3, 0.5), (0.5, 0.5))
NOISE_GRID = (0.3, 0.5, 1.0, 2.0)


@dataclass(frozen=True)
class SoftLabelSettings:
    producers: tuple[str, ...] = ("clean", "biased", "partial", "noise", "incomplete")
    max_samples: int | None = 6000
    hidden: tuple[int, ...] = ()  # () = multinomial logistic regression (the spec's student)
    fit: FitConfig = field(default_factory=lambda: FitConfig(epochs=60, batch_size=128, lr=3e-3, patience=10))
    labelled_fraction: float = 0.1  # incomplete supervision
    rounds: int = 3  # self-training rounds after the first teacher
    biased_grid: tuple[tuple[float, float, int], ...] = BIASED_GRID
    pll_grid: tuple[tuple[float, float], ...] = PLL_GRID
    noise_grid: tuple[float, ...] = NOISE_GRID


def train_student(
    ds: ImageDataset, soft: torch.Tensor, sets: torch.Tensor | None, seed: int, s: SoftLabelSettings, salt: int
) -> tuple[torch.nn.Module, float]:
    """Soft-label CE when `sets` is None, the top-k partial loss on `sets` otherwise; returns (model, test acc)."""
    model = build_mlp(ds.image_shape, s.hidden, ds.num_classes, seed=7919 * seed + salt)
    x = ds.train.x

    def step(idx: torch.Tensor) -> torch.Tensor:
        logits = model(x[idx])
        return weighted_ce(logits, soft[idx]) if sets is None else topk_partial_loss(logits, sets[idx])

    fit(model, len(x), step, ds.val, s.fit, generator(seed, 100 + salt))
    return model, accuracy(model, ds.test)


def _both_students(
    ds: ImageDataset,
    soft: torch.Tensor,
    sets: torch.Tensor,
    ind: Indicators,
    base: Record,
    seed: int,
    s: SoftLabelSettings,
) -> Record:
    _, acc_ce = train_student(ds, soft, None, seed, s, 1)
    _, acc_topk = train_student(ds, soft, sets, seed, s, 2)
    return {
        **base, "k": ind.k if ind.k is not None else "S", "delta": ind.delta, "gamma": ind.gamma,
        "delta_plus_gamma": ind.total, "gamma_global": ind.gamma_global, "label_top1": ind.top1_acc,
        "acc_soft_ce": acc_ce, "acc_topk": acc_topk,
    }  # fmt: skip


def run_producer(dataset: str, seed: int, producer: str, s: SoftLabelSettings) -> list[Record]:
    ds = cached_dataset(dataset, seed, s.max_samples)
    y, c = ds.train.y, ds.num_classes
    g = generator(seed, 11)
    base = {"dataset": dataset, "seed": seed, "producer": producer}
    out: list[Record] = []
    if producer == "clean":
        soft = F.one_hot(y, c).float()
        out.append(
            _both_students(
                ds, soft, topk_sets(soft, 1), best_k_indicators(soft, y, (1,)), {**base, "setting": "one-hot"}, seed, s
            )
        )
    elif producer == "biased":
        for delta, rho, rank in s.biased_grid:
            soft = biased_soft_labels(y, c, delta=delta, rho=rho, confuser_rank=rank, generator=g)
            ind = best_k_indicators(soft, y, (3,))
            setting = f"Δ*={delta} ρ={rho} confuser@{rank}"
            out.append(_both_students(ds, soft, topk_sets(soft, 3), ind, {**base, "setting": setting}, seed, s))
    elif producer == "partial":
        for delta, gamma in s.pll_grid:
            soft, sets = partial_label_soft_labels(y, c, delta=delta, gamma=gamma, generator=g)
            d, gm, gg = set_indicators(sets, y)
            ind = Indicators(None, d, gm, gg, (soft.argmax(1) == y).float().mean().item())
            out.append(_both_students(ds, soft, sets, ind, {**base, "setting": f"Δ*={delta} γ*={gamma}"}, seed, s))
    elif producer == "noise":
        for sigma in s.noise_grid:
            soft = additive_noise_soft_labels(y, c, sigma=sigma, generator=g)
            ind = best_k_indicators(soft, y, (1, 2, 3))
            out.append(
                _both_students(ds, soft, topk_sets(soft, ind.k or 1), ind, {**base, "setting": f"σ={sigma}"}, seed, s)
            )
    elif producer == "incomplete":
        out += _self_training(ds, seed, s, base)
    else:
        raise ValueError(f"unknown producer {producer!r}")
    return out


def _self_training(ds: ImageDataset, seed: int, s: SoftLabelSettings, base: Record) -> list[Record]:
    """Incomplete supervision: a teacher fit on the labelled share labels the rest with its softmax; the
    soft-CE student on both becomes the next round's teacher. Indicators are measured on the unlabelled part."""
    n, c = len(ds.train), ds.num_classes
    perm = torch.randperm(n, generator=generator(seed, 12))
    labelled = torch.zeros(n, dtype=torch.bool)
    labelled[perm[: max(c, int(s.labelled_fraction * n))]] = True
    onehot = F.one_hot(ds.train.y, c).float()
    teacher, _ = train_student(_subset(ds, labelled), onehot[labelled], None, seed, s, 3)
    out = []
    for r in range(s.rounds + 1):
        probs = F.softmax(predict_logits(teacher, ds.train.x), 1)
        soft = torch.where(labelled[:, None], onehot, probs)
        ind = best_k_indicators(probs[~labelled], ds.train.y[~labelled], (1, 2, 3))
        sets = topk_sets(soft, ind.k or 1) & ~(labelled[:, None] & (onehot == 0))  # labelled: the true label only
        record = _both_students(ds, soft, sets, ind, {**base, "setting": f"round {r}"}, seed, s)
        record["teacher_acc"] = accuracy(teacher, ds.test)
        out.append(record)
        teacher, _ = train_student(ds, soft, None, seed, s, 10 + r)
    return out


def _subset(ds: ImageDataset, keep: torch.Tensor) -> ImageDataset:
    return ImageDataset(ds.name, Split(ds.train.x[keep], ds.train.y[keep]), ds.val, ds.test, ds.num_classes)


def plan(dataset: str, seeds: list[int], s: SoftLabelSettings) -> list[Job]:
    return [
        Job(f"{dataset} seed={seed} {p}", lambda seed=seed, p=p: run_producer(dataset, seed, p, s))
        for seed in seeds
        for p in s.producers
    ]


METRICS = ["delta", "gamma", "delta_plus_gamma", "label_top1", "acc_soft_ce", "acc_topk"]


def tables(records: list[Record]) -> list[tuple[str, list[Record], list[str]]]:
    """One row per (data set, producer, setting); `k` lists the chosen k of each seed when they differ."""
    rows = aggregate(records, ["dataset", "producer", "setting"], [*METRICS, "teacher_acc"])
    for row in rows:
        ks = {str(r["k"]) for r in records if all(r[c] == row[c] for c in ("dataset", "producer", "setting"))}
        row["k"] = "/".join(sorted(ks))
    cols = ["dataset", "producer", "setting", "k", *METRICS]
    if any("teacher_acc" in r for r in records):
        cols.append("teacher_acc")
    return [("student test accuracy vs Δ + γ of the soft labels", rows, cols)]
