"""How the default recipe was chosen: each choice of the compact student's recipe against the default, on the
built-in teacher, scored on the **validation** split (the test split only ever reports the chosen recipe).

    python benchmarks/recipe.py                       # every variant → results/recipe/<variant>.json
    python benchmarks/recipe.py --variants default,init-random

Each variant is the `refine-distill` defaults plus the options listed below; one seed (0), 192 validation shapes.
The table in docs/method.md, "How the recipe was chosen", is rendered from the files by `python benchmarks/tables.py`.
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

# name → (what it changes, refine-distill options on top of the defaults)
VARIANTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "default": ("the default recipe", ()),
    "init-random": ("random initialisation", ("--init", "random")),
    "init-leading": ("teacher tensors cut to their first channels, blocks paired by name", ("--init", "leading")),
    "snr-none": ("every timestep weighted equally (no min-SNR)", ("--snr-gamma", "none")),
    "lr-constant": ("constant learning rate after the warm-up", ("--lr-schedule", "constant")),
    "steps-800": ("half the steps (800)", ("--max-steps", "800")),
    "steps-1200": ("three quarters of the steps (1200)", ("--max-steps", "1200")),
    "batch-32": (
        "batch 32 for half the steps at a higher rate: the same samples, fewer optimizer steps",
        ("--batch-size", "32", "--max-steps", "800", "--learning-rate", "3e-3"),
    ),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/recipe.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated variants")
    parser.add_argument("--eval-samples", type=int, default=192, help="validation shapes per run")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/recipe"), help="run dirs (not committed)")
    parser.add_argument("--results-dir", type=Path, default=REPO / "results", help="results root")
    parser.add_argument("--force", action="store_true", help="re-run variants whose result file exists")
    args = parser.parse_args(argv)
    offline_env()

    def body() -> int:
        names = [v.strip() for v in args.variants.split(",") if v.strip()]
        unknown = [n for n in names if n not in VARIANTS]
        if unknown or not names:
            raise ConfigError(f"unknown variant(s) {unknown or 'none given'}; choose from {', '.join(VARIANTS)}")
        scoring = Scoring(split="val", num_samples=args.eval_samples)
        for name in names:
            cell = Cell("recipe", name, (*COMPACT_ONLY, *VARIANTS[name][1]), seed=0)
            command = f"python benchmarks/recipe.py --variants {name} --eval-samples {args.eval_samples}"
            run_cell(cell, scoring, args.runs_dir, args.results_dir, command, args.force)
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
