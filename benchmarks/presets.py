"""The student preset table: distil every preset from the built-in teacher with the `refine-distill` defaults,
score it with `refine-eval` on held-out test shapes, count its cost, and write one result file per run.

    python benchmarks/presets.py --seeds 0 1                        # every preset → results/presets/<preset>-seed<k>.json
    python benchmarks/presets.py --presets compact-tiny --seeds 0   # one cell

A result that already exists is kept (an interrupted sweep resumes) unless `--force`. README's table is rendered
from the files by `python benchmarks/tables.py` (table `presets`, in `refine_control/evaluation/tables.py`).
"""

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a checkout without installing
    sys.path.insert(0, str(REPO))

from refine_control.cli_utils import offline_env, run_cli  # noqa: E402
from refine_control.errors import ConfigError  # noqa: E402
from refine_control.evaluation.sweep import COMPACT_ONLY, Cell, Scoring, run_cell  # noqa: E402
from refine_control.models.presets import STUDENT_PRESETS  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/presets.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default=",".join(STUDENT_PRESETS.names()), help="comma-separated presets")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--eval-samples", type=int, default=256, help="held-out test shapes per run")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/presets"), help="run dirs (not committed)")
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
        scoring = Scoring(split="test", num_samples=args.eval_samples)
        for preset in presets:
            for seed in args.seeds:
                cell = Cell("presets", f"{preset}-seed{seed}", (*COMPACT_ONLY, "--student", preset), seed)
                command = f"python benchmarks/presets.py --presets {preset} --seeds {seed}"
                command += f" --eval-samples {args.eval_samples}"
                run_cell(cell, scoring, args.runs_dir, args.results_dir, command, args.force)
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
