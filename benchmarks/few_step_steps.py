"""How many steps a few-step student recommends: `refine-eval` of one run's student on *validation* shapes at each
step count (from its recommended first timestep, or `--first-timestep`), against the teacher's 20 guided steps, and
the rule that picks the default (`FEW_STEP_SAMPLING_STEPS` in refine_control/training/config.py):

    the fewest steps whose validation scores keep >= 90% of the teacher's strict (pixel-exact) edge F1 and mask IoU
    and >= 95% of its colour and shape accuracy (the targets of the fast-student issue), point estimates.

    python benchmarks/few_step_steps.py runs/demo --first-timestep 759 --results-name few_step/steps-val

Test shapes are never used here; the chosen count is reported on test by `make demo`.
"""

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a checkout without installing
    sys.path.insert(0, str(REPO))

from refine_control.cli_utils import offline_env, run_cli  # noqa: E402
from refine_control.evaluation.tables import FAST_TARGETS as RULE  # noqa: E402
from refine_control.results import script_command, split_results_name  # noqa: E402


def chosen_steps(rows: dict[int, dict[str, float]]) -> int | None:
    """The fewest steps whose kept ratios all reach RULE's bars, or None."""
    passing = [steps for steps, row in rows.items() if all(row[f"{k}_kept"] >= bar for k, bar in RULE.items())]
    return min(passing, default=None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/few_step_steps.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a run whose student/ is a few-step (LCM) student, e.g. runs/demo")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 3, 4], help="step counts. Default: 1 2 3 4")
    parser.add_argument("--first-timestep", type=int, default=None, help="Default: the student's recommendation")
    parser.add_argument("--samples", type=int, default=256, help="validation shapes. Default: %(default)s")
    parser.add_argument("--seed", type=int, default=0, help="shapes and noise. Default: %(default)s")
    parser.add_argument("--results-name", default=None, help="write results/<group>/<name>.json")
    args = parser.parse_args(argv)
    offline_env()

    def body() -> int:
        from refine_control.evaluation.evaluate import EvalConfig, evaluate
        from refine_control.results import git_state, write_result

        target = split_results_name(args.results_name) if args.results_name else None
        commit, started = git_state(), time.perf_counter()
        rows: dict[int, dict[str, float]] = {}
        for steps in args.steps:
            cfg = EvalConfig(
                str(args.run), num_samples=args.samples, seed=args.seed, split="val", steps=steps,
                first_timestep=args.first_timestep,
            )  # fmt: skip
            report = evaluate(cfg).report
            metrics = report["metrics"]
            row = {"timesteps": report["sampling"]["timesteps"]}
            for key in RULE:
                row[key] = metrics[key]
                row[f"{key}_kept"] = metrics[f"{key}_kept"]
                row[f"{key}_kept_interval"] = metrics["intervals"][f"{key}_kept"]
            rows[steps] = row
            print(
                f"{steps} steps {row['timesteps']}: " + ", ".join(f"{k} {100 * row[f'{k}_kept']:.0f}%" for k in RULE)
            )
        teacher = {key: report["columns"]["teacher"][key] for key in RULE}
        choice = chosen_steps(rows)
        print(f"the rule picks {choice} steps")
        if target is not None:
            write_result(
                target,
                metrics={"teacher": teacher, "steps": {str(k): v for k, v in rows.items()}, "chosen_steps": choice},
                config={
                    "run": str(args.run),
                    "split": "val",
                    "samples": args.samples,
                    "first_timestep": args.first_timestep,
                    "rule": {f"{k}_kept": bar for k, bar in RULE.items()},
                },
                seed=args.seed,
                command=script_command("benchmarks/few_step_steps.py", argv),
                wall_s=time.perf_counter() - started,
                commit=commit,
            )
        return 0

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(main())
