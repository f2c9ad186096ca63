"""UPLLRS vs PRODEN / CC / RC across unreliability rates μ (the paper's main comparison, CPU scale).

Per seed and (η, μ): corrupt the training split with the UPLLRS generator (validation and test stay clean),
train every method on the same MLP and schedule, report test accuracy at the best-validation epoch, and log the
separation diagnostics (realised unreliable rate, steps, precision of the first removals, noise left in D_R).
"""

import logging
from dataclasses import dataclass, field

import torch

from refine_control.weaklabel.jobs import Job, cached_dataset, generator
from refine_control.weaklabel.nets import MLP, build_mlp
from refine_control.weaklabel.partial_label import PLL_METHODS, generate_unreliable_candidates, train_pll
from refine_control.weaklabel.report import Record, aggregate, pivot
from refine_control.weaklabel.training import FitConfig, accuracy
from refine_control.weaklabel.upllrs import (
    FixMatchConfig,
    SeparationConfig,
    SeparationResult,
    recursive_separation,
    train_upllrs_stage2,
)

logger = logging.getLogger(__name__)

# `upllrs_oracle` is a diagnostic upper bound, not a method: stage 2 on the *true* reliable/unreliable split.
METHODS = (*PLL_METHODS, "upllrs", "upllrs_no_ssl", "upllrs_oracle")


@dataclass(frozen=True)
class UPLLRSSettings:
    etas: tuple[float, ...] = (0.1, 0.3)
    mus: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7)
    methods: tuple[str, ...] = METHODS
    max_samples: int | None = 6000
    hidden: tuple[int, ...] = (256, 256)
    fit: FitConfig = field(default_factory=lambda: FitConfig(epochs=60, batch_size=128, lr=1e-3, patience=15))
    separation: SeparationConfig = field(default_factory=SeparationConfig)
    fixmatch: FixMatchConfig = field(default_factory=FixMatchConfig)

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")


def run_setting(dataset: str, seed: int, eta: float, mu: float, s: UPLLRSSettings) -> list[Record]:
    ds = cached_dataset(dataset, seed, s.max_samples)
    cands = generate_unreliable_candidates(ds.train.y, ds.num_classes, eta=eta, mu=mu, generator=generator(seed, 1))
    base = {"dataset": dataset, "seed": seed, "eta": eta, "mu": mu, "unreliable_rate": cands.unreliable_rate}
    x, mask = ds.train.x, cands.mask

    def make_model(k: int) -> MLP:
        return build_mlp(ds.image_shape, s.hidden, ds.num_classes, seed=7919 * seed + k)

    records: list[Record] = []
    for method in (m for m in s.methods if m in PLL_METHODS):
        model = make_model(10_000)
        fit = train_pll(method, model, x, mask, ds.val, s.fit, generator(seed, 2))
        records.append({**base, "method": method, "test_acc": accuracy(model, ds.test), "epochs": fit.epochs_run})
    stage2 = [m for m in s.methods if m.startswith("upllrs")]  # share one separation run
    if stage2:
        split = recursive_separation(
            make_model, x, mask, ds.val, s.separation, generator(seed, 3), truth_reliable=cands.reliable
        )
        first = [st.precision for st in split.steps[:3] if st.precision is not None]
        diag = {
            "steps": len(split.steps),
            "moved": len(split.unreliable) / len(x),
            "precision_first3": sum(first) / max(1, len(first)),
            "unreliable_left": (~cands.reliable[split.reliable]).float().mean().item(),
        }
        oracle = SeparationResult(torch.nonzero(cands.reliable).flatten(), torch.nonzero(~cands.reliable).flatten())
        for method in stage2:
            fm = FixMatchConfig(weight=0.0) if method == "upllrs_no_ssl" else s.fixmatch
            model = make_model(20_000)
            used = oracle if method == "upllrs_oracle" else split
            fit = train_upllrs_stage2(model, x, mask, used, ds.val, s.fit, fm, generator(seed, 4))
            records.append(
                {**base, **diag, "method": method, "test_acc": accuracy(model, ds.test), "epochs": fit.epochs_run}
            )
    return records


def plan(dataset: str, seeds: list[int], s: UPLLRSSettings) -> list[Job]:
    return [
        Job(
            f"{dataset} seed={seed} eta={eta} mu={mu}",
            lambda seed=seed, eta=eta, mu=mu: run_setting(dataset, seed, eta, mu, s),
        )
        for seed in seeds
        for eta in s.etas
        for mu in s.mus
    ]


def tables(records: list[Record]) -> list[tuple[str, list[Record], list[str]]]:
    """(title, rows, columns): accuracy per method across μ (with UPLLRS minus the best baseline of the same
    seed), and the separation diagnostics."""
    keys = ["dataset", "eta", "mu"]
    acc = aggregate(records, [*keys, "method"], ["test_acc"])
    rows, cols = pivot(acc, keys, "method", "test_acc")
    first = records[0]["method"] if records else None
    rates = aggregate([r for r in records if r["method"] == first], keys, ["unreliable_rate"])
    by_seed: dict[tuple[object, ...], dict[str, float]] = {}
    for r in records:
        by_seed.setdefault((*(r[k] for k in keys), r["seed"]), {})[r["method"]] = r["test_acc"]
    gains = [
        {
            **dict(zip([*keys, "seed"], key, strict=True)),
            "gain": m["upllrs"] - max(m[b] for b in PLL_METHODS if b in m),
        }
        for key, m in by_seed.items()
        if "upllrs" in m and any(b in m for b in PLL_METHODS)
    ]
    gain_rows = {tuple(g[k] for k in keys): g["gain"] for g in aggregate(gains, keys, ["gain"])}
    for row, rate in zip(rows, rates, strict=True):
        row["unreliable"] = rate["unreliable_rate"]
        if gain_rows:
            row["upllrs − best baseline"] = gain_rows.get(tuple(row[k] for k in keys), "")
    cols.insert(3, "unreliable")
    if gain_rows:
        cols.append("upllrs − best baseline")
    out = [("test accuracy (best-validation epoch)", rows, cols)]
    sep = [r for r in records if r["method"] == "upllrs"]
    if sep:
        metrics = ["unreliable_rate", "steps", "moved", "precision_first3", "unreliable_left"]
        out.append(
            (
                "recursive separation",
                aggregate(sep, ["dataset", "eta", "mu"], metrics),
                ["dataset", "eta", "mu", *metrics],
            )
        )
    return out
