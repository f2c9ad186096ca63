"""The few-step table: distil a finished run's student for few-step sampling (latent consistency distillation with
the guidance scale as input) and score it at 1, 2, 4 and 8 steps, without the guidance pair, against the teacher's
20-step guided images on held-out test shapes.

    python benchmarks/presets.py --presets compact-wide --seeds 0          # the starting run (if not there yet)
    python benchmarks/few_step.py --from runs/presets/presets/compact-wide-seed0

One result file per step count: results/few_step/steps<k>.json; with `--tiny-decoder`, the few-step student with a
tiny VAE distilled from the teacher's (`refine-distill --from RUN --tiny-decoder`) is scored at 4 steps too
(results/few_step/steps4-tiny-decoder.json). README's few-step table is rendered from them (and from
`benchmarks/latency.py` timings) by `python benchmarks/tables.py`.
"""

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a checkout without installing
    sys.path.insert(0, str(REPO))

from refine_control.cli_utils import offline_env, run_cli  # noqa: E402
from refine_control.errors import ConfigError  # noqa: E402
from refine_control.evaluation.sweep import Cell, Scoring, distil, record  # noqa: E402
from refine_control.results import git_state  # noqa: E402

GROUP = "few_step"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/few_step.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--from", dest="from_run", type=Path, required=True, help="a finished refine-distill run")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8], help="sampling steps to score")
    parser.add_argument("--guidance-scale", type=float, default=3.0, help="the scale given to the student")
    parser.add_argument("--eval-samples", type=int, default=256, help="held-out test shapes per score")
    parser.add_argument("--tiny-decoder", action="store_true", help="also distil and score a tiny VAE (4 steps)")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/few_step"), help="run dirs (not committed)")
    parser.add_argument("--results-dir", type=Path, default=REPO / "results", help="results root")
    args = parser.parse_args(argv)
    offline_env()

    def body() -> int:
        if not (args.from_run / "student").is_dir():
            raise ConfigError(f"--from {args.from_run}: no finished run there")
        commit = git_state()
        run, seconds = distil(Cell(GROUP, "student", ("--from", str(args.from_run), "--few-step")), args.runs_dir)
        command = f"python benchmarks/few_step.py --from {args.from_run} --eval-samples {args.eval_samples}"
        for steps in args.steps:
            scoring = Scoring("test", args.eval_samples, steps, args.guidance_scale)
            path = record(
                (GROUP, f"steps{steps}"), run, seconds, scoring, args.runs_dir, args.results_dir,
                f"{command} --steps {steps}", 0, commit,
            )  # fmt: skip
            print(f"wrote {path}", flush=True)
        if args.tiny_decoder:
            cell = Cell(GROUP, "tiny-decoder", ("--from", str(run), "--tiny-decoder"))
            tiny, tiny_seconds = distil(cell, args.runs_dir)
            path = record(
                (GROUP, "steps4-tiny-decoder"), tiny, seconds + tiny_seconds,
                Scoring("test", args.eval_samples, 4, args.guidance_scale), args.runs_dir, args.results_dir,
                f"{command} --steps 4 --tiny-decoder", 0, commit,
            )  # fmt: skip
            print(f"wrote {path}", flush=True)
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
