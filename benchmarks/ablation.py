"""The Refine-Control ablation on the built-in default: which part of the recipe buys what.

Same student (the default preset), data, steps and seeds for every variant, each scored by `refine-eval` on the same
held-out test shapes and noise:

    (a) scratch       random init, task loss only (no teacher at all)    --init random --loss-weights 1,0,0
    (b) + output KD   random init, task + output                           --init random --loss-weights 1,1,0
    (c) + feature KD  random init, the full tri-level loss                 --init random
    (d) + teacher init  the default recipe (weights selected from the teacher): results/presets/<default>-seed<k>

and, for label scarcity, scratch (a) and the default recipe (d) with 25 labelled shapes instead of 500
(`--variants scratch-labelled25,default-labelled25`; README's label-scarcity table), and the semi-supervised stage
there: stage 2 on unlabelled shapes added after the same labelled steps, against as many more labelled steps
(`--variants stage2-labelled25,longer-labelled25`; README's semi-supervised table); `*-labelled10`, `-labelled50` and
`-labelled200` are the same three arms with 10, 50 and 200 labelled shapes.

    python benchmarks/ablation.py --seeds 0 1      # (a)-(c) → results/ablation/<variant>-seed<k>.json

(d) is the preset table's run of the default student with the same seeds (`benchmarks/presets.py`). README's
ablation table is rendered from both groups by `python benchmarks/tables.py`.
"""

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a checkout without installing
    sys.path.insert(0, str(REPO))

from refine_control.cli_utils import offline_env, run_cli  # noqa: E402
from refine_control.errors import ConfigError  # noqa: E402
from refine_control.evaluation.sweep import Cell, Scoring, run_cell  # noqa: E402

# name → (row label, refine-distill options on top of the defaults)
VARIANTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "scratch": ("(a) scratch: random init, task loss only", ("--init", "random", "--loss-weights", "1,0,0")),
    "output-kd": ("(b) + output KD", ("--init", "random", "--loss-weights", "1,1,0")),
    "feature-kd": ("(c) + feature KD (tri-level loss)", ("--init", "random")),
    # Label scarcity: does the teacher matter when the labelled set is small? Scratch vs the default recipe.
    "scratch-labelled25": (
        "scratch, 25 labelled shapes",
        ("--init", "random", "--loss-weights", "1,0,0", "--builtin-labelled", "25"),
    ),
    "default-labelled25": ("the default recipe, 25 labelled shapes", ("--builtin-labelled", "25")),
}
# The semi-supervised stage under label scarcity, at each labelled-set size: stage 2 on 1,000 unlabelled shapes added
# after the same 1,600 labelled steps (800 more steps), against an equal-compute control of 2,400 labelled steps, and
# the same 1,600 labelled steps alone (`default-labelled<N>`; 25 is defined above).
SEMI_SUPERVISED_SIZES = (10, 25, 50, 200)
for _n in SEMI_SUPERVISED_SIZES:
    VARIANTS.setdefault(
        f"default-labelled{_n}", (f"the default recipe, {_n} labelled shapes", ("--builtin-labelled", f"{_n}"))
    )
    VARIANTS[f"stage2-labelled{_n}"] = (
        f"{_n} labelled shapes + stage 2 on 1,000 unlabelled (800 steps)",
        ("--builtin-labelled", f"{_n}", "--builtin-unlabelled", "1000", "--stage2-steps", "800"),
    )
    VARIANTS[f"longer-labelled{_n}"] = (
        f"{_n} labelled shapes, 2,400 labelled steps (the same compute)",
        ("--builtin-labelled", f"{_n}", "--max-steps", "2400"),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/ablation.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated variants")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--eval-samples", type=int, default=256, help="held-out test shapes per run")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/ablation"), help="run dirs (not committed)")
    parser.add_argument("--results-dir", type=Path, default=REPO / "results", help="results root")
    parser.add_argument("--force", action="store_true", help="re-run cells whose result file exists")
    args = parser.parse_args(argv)
    offline_env()

    def body() -> int:
        names = [v.strip() for v in args.variants.split(",") if v.strip()]
        unknown = [n for n in names if n not in VARIANTS]
        if unknown or not names or not args.seeds:
            raise ConfigError(f"unknown variant(s) {unknown or 'none given'}; choose from {', '.join(VARIANTS)}")
        scoring = Scoring(split="test", num_samples=args.eval_samples)
        for name in names:
            for seed in args.seeds:
                cell = Cell("ablation", f"{name}-seed{seed}", VARIANTS[name][1], seed)
                command = f"python benchmarks/ablation.py --variants {name} --seeds {seed}"
                command += f" --eval-samples {args.eval_samples}"
                run_cell(cell, scoring, args.runs_dir, args.results_dir, command, args.force)
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
