"""Teacher with vs without the intra-class term: intra/inter distance ratio, teacher and KD-student accuracy,
plus the margin-gating check (teacher accuracy after a few epochs with and without the δ gate)."""

import logging
from dataclasses import dataclass, field

from refine_control.weaklabel.intraclass import IntraClassConfig, teacher_diagnostics, train_kd_student, train_teacher
from refine_control.weaklabel.jobs import Job, cached_dataset, generator
from refine_control.weaklabel.nets import build_mlp
from refine_control.weaklabel.report import Record, aggregate
from refine_control.weaklabel.training import FitConfig, accuracy

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class IntraClassSettings:
    lams: tuple[float, ...] = (0.0, 0.1, 0.5, 1.0)
    tau: float = 0.5
    margin: float = 0.5
    memory_size: int = 256
    max_samples: int | None = 6000
    teacher_hidden: tuple[int, ...] = (256, 256)
    student_hidden: tuple[int, ...] = (16,)
    proj_dim: int = 32
    teacher_fit: FitConfig = field(default_factory=lambda: FitConfig(epochs=60, batch_size=64, lr=1e-3, patience=15))
    student_fit: FitConfig = field(default_factory=lambda: FitConfig(epochs=60, batch_size=64, lr=3e-3, patience=15))
    gating_epochs: int = 3  # short teacher runs for the margin-gating check (λ = 1); 0 skips the check
    gating_tau: float = 0.1


def run_seed(dataset: str, seed: int, s: IntraClassSettings) -> list[Record]:
    ds = cached_dataset(dataset, seed, s.max_samples)
    base = {"dataset": dataset, "seed": seed}
    records: list[Record] = []

    scratch = build_mlp(ds.image_shape, s.student_hidden, ds.num_classes, seed=7919 * seed + 1)
    train_kd_student(scratch, scratch, ds.train, ds.val, s.student_fit, generator(seed, 21), kd_weight=0.0)
    scratch_acc = accuracy(scratch, ds.test)

    for lam in s.lams:
        teacher = build_mlp(
            ds.image_shape, s.teacher_hidden, ds.num_classes, seed=7919 * seed + 2, proj_dim=s.proj_dim
        )
        cfg = IntraClassConfig(lam=lam, tau=s.tau, margin=s.margin, memory_size=s.memory_size)
        fit = train_teacher(teacher, ds.train, ds.val, cfg, s.teacher_fit, generator(seed, 22))
        student = build_mlp(ds.image_shape, s.student_hidden, ds.num_classes, seed=7919 * seed + 1)
        train_kd_student(student, teacher, ds.train, ds.val, s.student_fit, generator(seed, 23))
        records.append(
            {
                **base, "experiment": "lambda", "lam": lam, "teacher_acc": accuracy(teacher, ds.test),
                **teacher_diagnostics(teacher, ds.test), "student_kd_acc": accuracy(student, ds.test),
                "student_scratch_acc": scratch_acc, "teacher_epochs": fit.epochs_run,
            }
        )  # fmt: skip

    if s.gating_epochs > 0:
        short = FitConfig(epochs=s.gating_epochs, batch_size=s.teacher_fit.batch_size, lr=s.teacher_fit.lr, patience=0)
        for name, margin in (("off", None), ("0", 0.0), (str(s.margin), s.margin)):
            teacher = build_mlp(
                ds.image_shape, s.teacher_hidden, ds.num_classes, seed=7919 * seed + 2, proj_dim=s.proj_dim
            )
            cfg = IntraClassConfig(lam=1.0, tau=s.gating_tau, margin=margin, memory_size=s.memory_size)
            train_teacher(teacher, ds.train, None, cfg, short, generator(seed, 24))
            records.append(
                {**base, "experiment": "gating", "delta": name, "teacher_acc_early": accuracy(teacher, ds.test)}
            )
    return records


def plan(dataset: str, seeds: list[int], s: IntraClassSettings) -> list[Job]:
    return [Job(f"{dataset} seed={seed}", lambda seed=seed: run_seed(dataset, seed, s)) for seed in seeds]


def tables(records: list[Record]) -> list[tuple[str, list[Record], list[str]]]:
    """The λ sweep with paired (same seed) differences, and the gating check."""
    lam = [dict(r) for r in records if r["experiment"] == "lambda"]
    base = {(r["dataset"], r["seed"]): r for r in lam if r["lam"] == 0.0}
    for r in lam:
        ref = base.get((r["dataset"], r["seed"]))
        if ref is not None:
            r["ratio_vs_ce"] = r["intra_inter_ratio"] - ref["intra_inter_ratio"]
            r["student_vs_ce"] = r["student_kd_acc"] - ref["student_kd_acc"]
        r["kd_vs_scratch"] = r["student_kd_acc"] - r["student_scratch_acc"]
    metrics = ["teacher_acc", "intra_inter_ratio", "ratio_vs_ce", "entropy_T4", "student_kd_acc", "student_vs_ce"]
    metrics += ["kd_vs_scratch", "student_scratch_acc"]
    out = [
        (
            "teacher λ sweep (λ = 0 is the plain CE teacher; *_vs_* columns are same-seed differences)",
            aggregate(lam, ["dataset", "lam"], metrics),
            ["dataset", "lam", *metrics],
        )
    ]
    gate = [r for r in records if r["experiment"] == "gating"]
    if gate:
        rows = aggregate(gate, ["dataset", "delta"], ["teacher_acc_early"])
        out.append(
            (
                "margin gating: teacher accuracy after a short run (λ = 1)",
                rows,
                ["dataset", "delta", "teacher_acc_early"],
            )
        )
    return out
