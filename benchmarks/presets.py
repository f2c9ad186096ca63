"""The student preset table: distil every preset from the built-in teacher at the CLI's default recipe, score it
with `refine-eval` on held-out test shapes, count its cost, and write one result file per run.

    python benchmarks/presets.py --seeds 0 1                        # every preset, results/presets/<preset>-seed<k>.json
    python benchmarks/presets.py --presets compact-tiny --seeds 0   # one cell

A result that already exists is kept (so an interrupted sweep resumes), unless `--force`. The README table is then
rendered from the files by `python benchmarks/tables.py` (table `presets`, defined in
`refine_control/evaluation/tables.py`). Runs go to `--output-dir` (not committed).
"""

import argparse
import json
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a checkout without installing
    sys.path.insert(0, str(REPO))

from refine_control.cli import main as distill  # noqa: E402
from refine_control.cli_utils import offline_env, run_cli  # noqa: E402
from refine_control.errors import ConfigError  # noqa: E402
from refine_control.models.presets import STUDENT_PRESETS  # noqa: E402
from refine_control.results import git_state, result_path, write_result  # noqa: E402

GROUP = "presets"


def _evaluate(run: Path, samples: int, judge_cache: Path) -> dict[str, Any]:
    """`refine-eval` on the run's test split; the judge net is trained once and shared between runs."""
    from refine_control.evaluation.evaluate import EvalConfig, evaluate
    from refine_control.evaluation.report import write_report

    eval_dir = run / "eval"
    eval_dir.mkdir(exist_ok=True)
    for cached in judge_cache.glob("*.safetensors"):
        shutil.copy2(cached, eval_dir / cached.name)
    report = evaluate(EvalConfig(target=str(run), num_samples=samples, seed=0, split="test")).report
    write_report(eval_dir / "metrics.json", report)
    for trained in eval_dir.glob("*.safetensors"):
        shutil.copy2(trained, judge_cache / trained.name)
    return report


def cost(run: Path) -> dict[str, Any]:
    """Parameters and MACs per denoiser step (batch 1) of the run's student and its teacher."""
    import torch

    from refine_control.evaluation.generate import load_pipeline
    from refine_control.models.cost import denoiser_macs
    from refine_control.models.presets import count_params
    from refine_control.models.teacher import load_teacher

    config = json.loads((run / "config.json").read_text())
    teacher = load_teacher(config["teacher"], config.get("controlnet"), torch.float32, torch.device("cpu"))
    student = load_pipeline(run / "student")
    size = config["resolved"]["resolution"]
    factor = teacher.vae_scale_factor
    return {
        "params": count_params(student.unet, student.controlnet),
        "macs_per_step": denoiser_macs(student.unet, student.controlnet, size, factor),
        "teacher_params": count_params(teacher.unet, teacher.controlnet),
        "teacher_macs_per_step": denoiser_macs(teacher.unet, teacher.controlnet, size, factor),
    }


def run_cell(preset: str, seed: int, args: argparse.Namespace, judge_cache: Path) -> Path:
    run = args.output_dir / f"{preset}-seed{seed}"
    commit = git_state()
    distill_argv = ["--teacher", "builtin", "--student", preset, "-o", str(run), "--overwrite", "-q"]
    distill_argv += ["--seed", str(seed), *shlex.split(args.distill_args)]
    print(f"=== {preset}, seed {seed}: refine-distill {' '.join(distill_argv)}", flush=True)
    start = time.perf_counter()
    if (code := distill(distill_argv)) != 0:
        raise SystemExit(code)
    distil_s = time.perf_counter() - start
    report = _evaluate(run, args.eval_samples, judge_cache)
    config = json.loads((run / "config.json").read_text())
    train = json.loads((run / "metrics.json").read_text())
    metrics = {
        **report["metrics"],
        "teacher": report["columns"]["teacher"],
        **cost(run),
        "distil_s": round(distil_s, 1),
        "sec_per_step_median": train["sec_per_step_median"],
    }
    command = f"python benchmarks/presets.py --presets {preset} --seeds {seed} --eval-samples {args.eval_samples}"
    if args.distill_args:
        command += f" --distill-args {shlex.quote(args.distill_args)}"
    return write_result(
        (GROUP, f"{preset}-seed{seed}"),
        metrics=metrics,
        config={**config, "eval": {"num_samples": args.eval_samples, "split": "test", **report["sampling"]}},
        seed=seed,
        command=command,
        wall_s=time.perf_counter() - start,
        root=args.results_dir,
        commit=commit,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/presets.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default=",".join(STUDENT_PRESETS.names()), help="comma-separated presets")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--eval-samples", type=int, default=256, help="held-out test shapes per run")
    parser.add_argument("--distill-args", default="", help="extra refine-distill options (default: none)")
    parser.add_argument("--output-dir", type=Path, default=Path("runs/presets"), help="run dirs (not committed)")
    parser.add_argument("--results-dir", type=Path, default=REPO / "results", help="results root")
    parser.add_argument("--force", action="store_true", help="re-run cells whose result file exists")
    args = parser.parse_args(argv)
    offline_env()

    def body() -> int:
        presets = [p.strip() for p in args.presets.split(",") if p.strip()]
        for preset in presets:
            STUDENT_PRESETS.get(preset)
        if not presets or not args.seeds:
            raise ConfigError("nothing to run: give --presets and --seeds")
        judge_cache = args.output_dir / "judge"
        judge_cache.mkdir(parents=True, exist_ok=True)
        for preset in presets:
            for seed in args.seeds:
                if result_path(GROUP, f"{preset}-seed{seed}", args.results_dir).is_file() and not args.force:
                    print(f"=== {preset}, seed {seed}: result exists, kept (--force to re-run)", flush=True)
                    continue
                print(f"wrote {run_cell(preset, seed, args, judge_cache)}", flush=True)
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
