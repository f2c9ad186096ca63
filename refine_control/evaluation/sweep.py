"""One cell of a recorded experiment: distil with given `refine-distill` options, score with `refine-eval`, count
the cost, and write the result file (`refine_control.results`). The drivers in `benchmarks/` (presets, recipe,
ablation) are lists of such cells.

A cell whose result file exists is skipped unless `force`, so an interrupted sweep resumes where it stopped.
"""

import io
import json
import shlex
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refine_control.atomic import write_bytes
from refine_control.results import git_state, result_path, write_result

# The compact-student sweeps (presets, recipe choices, ablation) study the recipe's first stages alone; every result
# they recorded before the fast recipe became the default was made this way.
COMPACT_ONLY = ("--recipe", "guided")


@dataclass(frozen=True)
class Cell:
    """One run: its result file `results/<group>/<name>.json` and the `refine-distill` options that make it."""

    group: str
    name: str
    distill_args: tuple[str, ...]
    seed: int = 0


@dataclass(frozen=True)
class Scoring:
    """How every cell of a sweep is scored (the same samples, noise and judge for all)."""

    split: str = "test"
    num_samples: int = 256
    steps: int = 20
    guidance_scale: float = 3.0
    data: str | None = None  # a held-out captioned image folder instead of the built-in shapes (`refine-eval --data`)


def _evaluate(run: Path, scoring: Scoring, judge_cache: Path) -> dict[str, Any]:
    """`refine-eval` on the run; the judge net and the teacher's images (same samples, noise and settings for every
    cell) are made once per sweep and shared between its cells."""
    import numpy as np

    from refine_control.evaluation.evaluate import EvalConfig, evaluate
    from refine_control.evaluation.report import write_report

    eval_dir = run / "eval"
    eval_dir.mkdir(exist_ok=True)
    for cached in judge_cache.glob("*.safetensors"):
        shutil.copy2(cached, eval_dir / cached.name)
    cfg = EvalConfig(
        target=str(run),
        num_samples=scoring.num_samples,
        seed=0,
        split=scoring.split,
        steps=scoring.steps,
        guidance_scale=scoring.guidance_scale,
        data=scoring.data,
    )
    config = json.loads((run / "config.json").read_text())
    benchmark = f"{scoring.split}-{scoring.num_samples}"
    if scoring.data is not None:
        benchmark = f"{Path(scoring.data).name}-{scoring.num_samples}"
    teacher_file = judge_cache / f"teacher-{config['teacher'].replace('/', '_')}-{benchmark}.npy"
    cached = np.load(teacher_file) if config["teacher"] == "builtin" and teacher_file.is_file() else None
    result = evaluate(cfg, cached)
    if config["teacher"] == "builtin" and cached is None:
        buffer = io.BytesIO()
        np.save(buffer, result.images["teacher"])
        write_bytes(teacher_file, buffer.getvalue())
    report = result.report
    write_report(eval_dir / "metrics.json", report)
    for trained in eval_dir.glob("*.safetensors"):  # atomically: sweeps in parallel share the cache
        write_bytes(judge_cache / trained.name, trained.read_bytes())
    return report


def cost(run: Path) -> dict[str, Any]:
    """Parameters and MACs per denoiser step (batch 1) of the run's student and of its teacher."""
    import torch

    from refine_control.models.cost import denoiser_macs
    from refine_control.models.pipeline_dir import load_pipeline
    from refine_control.models.presets import count_params
    from refine_control.models.teacher import load_teacher

    config = json.loads((run / "config.json").read_text())
    teacher = load_teacher(
        config["teacher"], config.get("controlnet"), torch.float32, torch.device("cpu"),
        teacher_config=config.get("teacher_config"),
    )  # fmt: skip
    student = load_pipeline(run / "student")
    size, factor = config["resolved"]["resolution"], teacher.vae_scale_factor
    return {
        "params": count_params(student.unet, student.controlnet),
        "macs_per_step": denoiser_macs(student.unet, student.controlnet, size, factor),
        "teacher_params": count_params(teacher.unet, teacher.controlnet),
        "teacher_macs_per_step": denoiser_macs(teacher.unet, teacher.controlnet, size, factor),
    }


def distil(cell: Cell, runs_dir: Path) -> tuple[Path, float]:
    """Run `refine-distill` for the cell; return the run dir and the seconds it took."""
    from refine_control.cli import main as distill

    run = runs_dir / cell.group / cell.name
    argv = ["--teacher", "builtin", "-o", str(run), "--overwrite", "-q", "--seed", str(cell.seed)]
    argv += list(cell.distill_args)
    print(f"=== {cell.group}/{cell.name}: refine-distill {shlex.join(argv)}", flush=True)  # noqa: T201
    start = time.perf_counter()
    if (code := distill(argv)) != 0:
        raise SystemExit(code)
    return run, time.perf_counter() - start


def record(
    target: tuple[str, str],
    run: Path,
    distil_s: float,
    scoring: Scoring,
    runs_dir: Path,
    results_root: Path,
    command: str,
    seed: int,
    commit: tuple[str, bool | str],
) -> Path:
    """Score a finished run and write its result file `results_root/<group>/<name>.json`."""
    start = time.perf_counter()
    judge_cache = runs_dir / "judge"
    judge_cache.mkdir(parents=True, exist_ok=True)
    report = _evaluate(run, scoring, judge_cache)
    config = json.loads((run / "config.json").read_text())
    train = json.loads((run / "metrics.json").read_text())
    metrics = {
        **report["metrics"],
        "teacher": report["columns"]["teacher"],
        **cost(run),
        "distil_s": round(distil_s, 1),
        "training": train,  # the run's own metrics.json (loss terms and step times, or the tiny VAE's scores)
    }
    where = {"data": scoring.data} if scoring.data is not None else {"split": scoring.split}
    scored = {**where, "num_samples": scoring.num_samples, **report["sampling"]}
    return write_result(
        target,
        metrics=metrics,
        config={**config, "eval": scored},
        seed=seed,
        command=command,
        wall_s=distil_s + time.perf_counter() - start,
        root=results_root,
        commit=commit,
    )


def run_cell(
    cell: Cell, scoring: Scoring, runs_dir: Path, results_root: Path, command: str, force: bool = False
) -> Path | None:
    """Distil, score and record one cell; return its result path (None when it existed and was kept)."""
    if result_path(cell.group, cell.name, results_root).is_file() and not force:
        print(f"=== {cell.group}/{cell.name}: result exists, kept (--force to re-run)", flush=True)  # noqa: T201
        return None
    commit = git_state()
    run, distil_s = distil(cell, runs_dir)
    return record((cell.group, cell.name), run, distil_s, scoring, runs_dir, results_root, command, cell.seed, commit)
