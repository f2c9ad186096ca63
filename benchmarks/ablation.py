"""The Refine-Control ablation on the built-in default: which part of the recipe buys what.

At equal labelled data, total optimizer steps and student preset, averaged over seeds:

    (a) scratch       task loss only (no teacher signal)              --loss-weights 1,0,0
    (b) + output KD   task + output                                   --loss-weights 1,1,0
    (c) + feature KD  the full tri-level loss                          --loss-weights 1,1,1
    (d) + stage 2     (c), then semi-supervised on unlabelled images  (≥ 5× the labelled set), same total steps

Every run is scored by `refine-eval` on the same held-out shapes, seeds and noise. Writes `ablation.json` and
`ablation.md` (mean ± std over seeds) under `--output-dir`.

    python benchmarks/ablation.py --output-dir runs/ablation --seeds 0 1
"""

import argparse
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from refine_control.atomic import write_json, write_text
from refine_control.cli import main as distill

VARIANTS = {
    "a": ("scratch (task loss only)", "1,0,0", False),
    "b": ("+ output KD", "1,1,0", False),
    "c": ("+ feature KD (tri-level)", "1,1,1", False),
    "d": ("+ semi-supervised stage 2", "1,1,1", True),
}
COLUMNS = {
    "edge_f1": "edge F1 ↑",
    "edge_f1_kept": "edge F1 kept ↑",
    "mask_iou": "mask IoU ↑",
    "colour_acc": "colour acc ↑",
    "texture_acc": "texture acc ↑",
    "shape_acc": "shape acc ↑",
    "psnr_gt_db": "PSNR vs GT ↑",
    "teacher_psnr_db": "PSNR vs teacher ↑",
    "domain_fid": "domain FID ↓",
}


@dataclass(frozen=True)
class AblationConfig:
    output_dir: Path
    seeds: tuple[int, ...] = (0, 1)
    steps: int = 600
    labelled: int = 200
    unlabelled: int = 1000
    student: str = "controlnet-half"
    learning_rate: float = 5e-4
    eval_samples: int = 128


def _distill_argv(cfg: AblationConfig, variant: str, seed: int, run: Path) -> list[str]:
    _, weights, semi = VARIANTS[variant]
    stage2 = cfg.steps // 3 if semi else 0
    return [
        "--teacher", "builtin", "--student", cfg.student, "-o", str(run), "--overwrite", "-q", "--seed", str(seed),
        "--loss-weights", weights, "--learning-rate", str(cfg.learning_rate), "--init", "random",
        "--max-steps", str(cfg.steps - stage2), "--stage2-steps", str(stage2),
        "--builtin-labelled", str(cfg.labelled), "--builtin-unlabelled", str(cfg.unlabelled if semi else 0),
    ]  # fmt: skip


def _evaluate(run: Path, cfg: AblationConfig, judge_cache: Path) -> dict[str, Any]:
    """`refine-eval` on the run; the judge net is trained once and shared (the cache key holds seed and steps)."""
    from refine_control.evaluation.evaluate import EvalConfig, evaluate
    from refine_control.evaluation.report import write_report

    eval_dir = run / "eval"
    eval_dir.mkdir(exist_ok=True)
    for cached in judge_cache.glob("*.safetensors"):
        shutil.copy2(cached, eval_dir / cached.name)
    report = evaluate(EvalConfig(target=str(run), num_samples=cfg.eval_samples, seed=0)).report
    write_report(eval_dir / "metrics.json", report)
    for trained in eval_dir.glob("*.safetensors"):
        shutil.copy2(trained, judge_cache / trained.name)
    return {"student": report["metrics"], "teacher": report["columns"]["teacher"]}


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _table(results: dict[str, Any], cfg: AblationConfig) -> str:
    head = "| variant | " + " | ".join(COLUMNS.values()) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 1)]
    rows = {VARIANTS[v][0]: [r["student"] for r in runs.values()] for v, runs in results["runs"].items()}
    rows["teacher"] = [results["teacher"]]
    for name, reports in rows.items():
        cells = []
        for key in COLUMNS:
            values = [r[key] for r in reports if key in r]
            if not values:
                cells.append("-")
                continue
            mean, std = _mean_std(values)
            cells.append(f"{mean:.3f} ± {std:.3f}" if len(values) > 1 else f"{mean:.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"Student `{cfg.student}` from random initialisation, {cfg.steps} optimizer steps per run (batch 16, "
        f"learning rate {cfg.learning_rate:g}), {cfg.labelled} labelled shapes; "
        f"(d) spends {cfg.steps // 3} of its steps in stage 2 with {cfg.unlabelled} unlabelled shapes. Mean ± std "
        f"over seeds {', '.join(map(str, cfg.seeds))}; {cfg.eval_samples} held-out shapes, 20 DDIM steps, "
        "guidance 3, the same noise for every model."
    )
    return "\n".join(lines)


def run_ablation(cfg: AblationConfig) -> dict[str, Any]:
    judge_cache = cfg.output_dir / "judge"
    judge_cache.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"config": {**asdict(cfg), "output_dir": str(cfg.output_dir)}, "runs": {}}
    for variant in VARIANTS:
        for seed in cfg.seeds:
            run = cfg.output_dir / f"{variant}-seed{seed}"
            print(f"=== ({variant}) {VARIANTS[variant][0]}, seed {seed}", flush=True)
            start = time.perf_counter()
            if (code := distill(_distill_argv(cfg, variant, seed, run))) != 0:
                raise SystemExit(code)
            scores = _evaluate(run, cfg, judge_cache)
            scores["seconds"] = round(time.perf_counter() - start, 1)
            results["runs"].setdefault(variant, {})[str(seed)] = scores
            results["teacher"] = scores.pop("teacher")
            write_json(cfg.output_dir / "ablation.json", results)
    write_text(cfg.output_dir / "ablation.md", _table(results, cfg) + "\n")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    d = AblationConfig(Path("runs/ablation"))
    parser.add_argument("--output-dir", type=Path, default=d.output_dir)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(d.seeds))
    parser.add_argument("--steps", type=int, default=d.steps, help="total optimizer steps per run")
    parser.add_argument("--labelled", type=int, default=d.labelled)
    parser.add_argument("--unlabelled", type=int, default=d.unlabelled)
    parser.add_argument("--student", default=d.student)
    parser.add_argument("--learning-rate", type=float, default=d.learning_rate)
    parser.add_argument("--eval-samples", type=int, default=d.eval_samples)
    args = parser.parse_args(argv)
    if args.steps < 3 or args.labelled < 1 or args.unlabelled < 5 * args.labelled:
        parser.error("need --steps >= 3, --labelled >= 1 and --unlabelled >= 5 × --labelled")
    cfg = AblationConfig(
        args.output_dir,
        tuple(args.seeds),
        args.steps,
        args.labelled,
        args.unlabelled,
        args.student,
        args.learning_rate,
        args.eval_samples,
    )
    results = run_ablation(cfg)
    print(_table(results, cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
