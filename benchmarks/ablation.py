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
(`--variants stage2-labelled25,longer-labelled25`; README's semi-supervised table), and stage 2's schedule on
labelled samples only (`replay-labelled25`), and stage 2 on the same unlabelled images without the teacher's targets
on them (`stage2task-labelled25`: what the images alone add); `*-labelled10`, `-labelled50` and `-labelled200` are the same arms with
10, 50 and 200 labelled shapes, and `fashion-<arm>-labelled<N>` the same on Fashion-MNIST image folders (written once
under RUNS_DIR/data; scored on 256 images of the official test split).

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
from refine_control.evaluation.sweep import COMPACT_ONLY, Cell, Scoring, run_cell  # noqa: E402

# name → (row label, refine-distill options on top of the defaults)
VARIANTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "scratch": ("(a) scratch: random init, task loss only", ("--init", "random", "--loss-weights", "1,0,0")),
    "output-kd": ("(b) + output KD", ("--init", "random", "--loss-weights", "1,1,0")),
    "feature-kd": ("(c) + feature KD (tri-level loss)", ("--init", "random")),
    # Label scarcity: does the teacher matter when the labelled set is small? Scratch vs the default recipe
    # (`default-labelled25`, below).
    "scratch-labelled25": (
        "scratch, 25 labelled shapes",
        ("--init", "random", "--loss-weights", "1,0,0", "--builtin-labelled", "25"),
    ),
}
# The semi-supervised stage under label scarcity, at each labelled-set size: stage 2 on 1,000 unlabelled images added
# after the same 1,600 labelled steps (800 more steps), against an equal-compute control of 2,400 labelled steps, the
# same 1,600 labelled steps alone (`default-`), and stage 2's schedule replaying labelled samples only (`replay-`:
# the learning-rate restart without the unlabelled images). On the built-in shapes, and with `fashion-` on
# Fashion-MNIST image folders (the builtin teacher; folders written under RUNS_DIR/data by `fashion_folders`).
SEMI_SUPERVISED_SIZES = (10, 25, 50, 200)
SEMI_SUPERVISED_ARMS = {  # arm → (row label after "<N> labelled", options; UNLABELLED stands for the unlabelled set)
    "default": ("", ()),
    "stage2": (" + stage 2 on 1,000 unlabelled (800 steps)", ("UNLABELLED", "--stage2-steps", "800")),
    "longer": (", 2,400 labelled steps (the same compute)", ("--max-steps", "2400")),
    "replay": (
        " + stage 2's 800 steps on labelled samples only",
        ("UNLABELLED", "--stage2-steps", "800", "--replay-ratio", "1"),
    ),
    # Stage 2 attributed: the same unlabelled images and schedule without the teacher's targets on them (the task
    # loss alone; labelled replay keeps the tri-level loss), so any gain left is the images', not the teacher's.
    "stage2task": (
        " + stage 2 on 1,000 unlabelled, task loss only on them (800 steps)",
        ("UNLABELLED", "--stage2-steps", "800", "--unlabelled-loss", "task"),
    ),
}
FASHION_UNLABELLED, FASHION_TEST = 1000, 512  # test: 256 scored images + 256 as the domain FID's real side


def fashion_folders(data_dir: Path) -> dict[str, Path]:
    """The Fashion-MNIST folders of the experiment, written once: the labelled sets are the first N images of one
    shuffled training order (nested), the unlabelled set the 1,000 after the largest (disjoint from every labelled
    set), the test set from the official test split."""
    from refine_control.data.fashion_mnist import write_fashion_folder

    folders = {f"labelled{n}": (n, 0, True, "train") for n in SEMI_SUPERVISED_SIZES}
    folders["unlabelled"] = (FASHION_UNLABELLED, max(SEMI_SUPERVISED_SIZES), False, "train")
    folders["test"] = (FASHION_TEST, 0, True, "test")
    paths = {}
    for name, (count, skip, captions, split) in folders.items():
        paths[name] = data_dir / f"fashion-{name}"
        if not (paths[name] / "metadata.jsonl").is_file():
            write_fashion_folder(paths[name], split, count, seed=0, captions=captions, skip=skip)
    return paths


def _expand(options: tuple[str, ...], unlabelled: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(word for option in options for word in (unlabelled if option == "UNLABELLED" else (option,)))


def semi_supervised_variants(data_dir: Path) -> dict[str, tuple[str, tuple[str, ...]]]:
    """`<arm>-labelled<N>` on the built-in shapes and `fashion-<arm>-labelled<N>` on the folders in `data_dir`."""
    out = {}
    for n in SEMI_SUPERVISED_SIZES:
        for arm, (label, options) in SEMI_SUPERVISED_ARMS.items():
            out[f"{arm}-labelled{n}"] = (
                f"{n} labelled shapes{label}",
                ("--builtin-labelled", f"{n}", *_expand(options, ("--builtin-unlabelled", f"{FASHION_UNLABELLED}"))),
            )
            out[f"fashion-{arm}-labelled{n}"] = (
                f"{n} labelled Fashion-MNIST images{label}",
                (
                    "--labelled",
                    str(data_dir / f"fashion-labelled{n}"),
                    *_expand(options, ("--unlabelled", str(data_dir / "fashion-unlabelled"))),
                ),
            )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/ablation.py", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--variants", default="scratch,output-kd,feature-kd", help="comma-separated variants. Default: %(default)s"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--eval-samples", type=int, default=256, help="held-out test images per run")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/ablation"), help="run dirs (not committed)")
    parser.add_argument("--results-dir", type=Path, default=REPO / "results", help="results root")
    parser.add_argument("--force", action="store_true", help="re-run cells whose result file exists")
    args = parser.parse_args(argv)
    offline_env()

    def body() -> int:
        variants = {**VARIANTS, **semi_supervised_variants(args.runs_dir / "data")}
        names = [v.strip() for v in args.variants.split(",") if v.strip()]
        unknown = [n for n in names if n not in variants]
        if unknown or not names or not args.seeds:
            raise ConfigError(f"unknown variant(s) {unknown or 'none given'}; choose from {', '.join(variants)}")
        shapes = Scoring(split="test", num_samples=args.eval_samples)
        if any(n.startswith("fashion-") for n in names):
            fashion = Scoring(num_samples=args.eval_samples, data=str(fashion_folders(args.runs_dir / "data")["test"]))
        for name in names:
            for seed in args.seeds:
                cell = Cell("ablation", f"{name}-seed{seed}", (*COMPACT_ONLY, *variants[name][1]), seed)
                command = f"python benchmarks/ablation.py --variants {name} --seeds {seed}"
                command += f" --eval-samples {args.eval_samples}"
                scoring = fashion if name.startswith("fashion-") else shapes
                run_cell(cell, scoring, args.runs_dir, args.results_dir, command, args.force)
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
