"""The default recipe over training seeds: `make demo`'s distillation and evaluation, the same command lines, once per
seed, so that the demo's quality row carries its spread across seeds and not one run's.

    python benchmarks/recipe_seeds.py --seeds 0 1 2       # → results/recipe_seeds/seed<k>.json

Seed K distils with `refine-distill --teacher builtin --seed K` (the fast recipe's defaults) and is scored by
`refine-eval` on 256 held-out test shapes, evaluation seed K, against the teacher's 20 guided steps. The seeds were
fixed (0, 1, 2) before any run. A run dir under `--runs-dir` whose distillation is finished, or whose evaluation was
made from its student with the same settings, is kept (e.g. a `make demo` run copied to `seed0`); the result file
lists what was kept. Table `recipe_seeds` (README) is rendered by `python benchmarks/tables.py`.
"""

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a checkout without installing
    sys.path.insert(0, str(REPO))

from refine_control.cli_utils import offline_env, run_cli  # noqa: E402
from refine_control.errors import ConfigError  # noqa: E402
from refine_control.results import git_state, write_result  # noqa: E402

GROUP = "recipe_seeds"


def run_seed(seed: int, runs_dir: Path, results_dir: Path) -> Path:
    """Distil and score one seed (keeping finished stages); write its result file."""
    from refine_control.cli import main as distill
    from refine_control.demo import DemoConfig, compare, distill_argv, eval_argv, reusable
    from refine_control.evaluation.cli import main as evaluate

    commit = git_state()
    cfg = DemoConfig(output_dir=runs_dir / f"seed{seed}", seed=seed)
    run = cfg.output_dir
    seconds: dict[str, float | None] = {}
    kept: list[str] = []
    for stage, command, argv in (("distil", distill, distill_argv(cfg)), ("evaluate", evaluate, eval_argv(cfg))):
        if reusable(stage, cfg, web=False):  # an evaluation only when newer than the student
            print(f"=== seed {seed}: {stage} kept from {run}", flush=True)
            kept.append(stage)
            seconds[stage] = None
            continue
        print(f"=== seed {seed}: {stage}", flush=True)
        start = time.perf_counter()
        if (code := command(argv)) != 0:
            raise SystemExit(code)
        seconds[stage] = round(time.perf_counter() - start, 1)
    if "distil" in kept:  # the recipe's own record of its stages' seconds
        seconds["distil"] = round(sum(json.loads((run / "metrics.json").read_text())["seconds"].values()), 1)
    report = json.loads((run / "eval" / "metrics.json").read_text())
    return write_result(
        (GROUP, f"seed{seed}"),
        metrics={**compare(report, None), "seconds": seconds, "kept": kept},
        config={
            **json.loads((run / "config.json").read_text()),
            "eval": {"num_samples": report["num_samples"], **report["sampling"]},
        },
        seed=seed,
        command=f"python benchmarks/recipe_seeds.py --seeds {seed}",
        wall_s=sum(v for v in seconds.values() if v is not None),
        notes=f"kept in {run}: {', '.join(kept)}, made earlier by the same command lines" if kept else None,
        root=results_dir,
        commit=commit,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/recipe_seeds.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training and evaluation seeds")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/recipe-seeds"), help="run dirs (not committed)")
    parser.add_argument("--results-dir", type=Path, default=REPO / "results", help="results root")
    args = parser.parse_args(argv)
    offline_env()

    def body() -> int:
        if len(set(args.seeds)) != len(args.seeds) or min(args.seeds) < 0:
            raise ConfigError(f"`--seeds` must be distinct and >= 0, got {args.seeds}")
        for seed in args.seeds:
            print(f"wrote {run_seed(seed, args.runs_dir, args.results_dir)}")
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
