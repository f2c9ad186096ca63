"""`refine-weaklabel`: run one paper's CPU-scale experiment over seeds and print its results table.

refine-weaklabel {upllrs,softlabel,intraclass,transfer} --dataset {digits,fashion-mnist,mnist,synthetic}
                 [--seed S] [--num-seeds N] [--results-dir DIR] [--json FILE] [--quick] [--threads T]
                 [--max-samples N] [--only KEY=VALUE ...] [-v | -q]

With `--results-dir`, every run (one seed × one setting) is written as a result file
(`refine_control.results`) whose `command` is this command line; `results/weaklabel/<experiment>/` holds the
committed ones that docs/weaklabel.md is rendered from.
"""

import argparse
import dataclasses
import logging
import math
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from tqdm import tqdm

from refine_control.atomic import write_json
from refine_control.cli_parser import HelpFormatter, Parser, add_output, add_verbosity, new_parser, verbosity
from refine_control.cli_utils import check_output, run_cli, setup_logging
from refine_control.errors import ConfigError
from refine_control.results import git_state, machine_info, write_result
from refine_control.weaklabel import (
    intraclass_experiment,
    softlabel_experiment,
    transfer_experiment,
    upllrs_experiment,
)
from refine_control.weaklabel.datasets import DATASETS
from refine_control.weaklabel.jobs import Job, RunResult, cached_dataset, flat_records
from refine_control.weaklabel.report import markdown_table

logger = logging.getLogger(__name__)

COMMANDS = {
    "upllrs": "UPLLRS vs PRODEN/CC/RC on the paper's (γ, μ) grid (IJCAI 2023)",
    "softlabel": "student accuracy vs Δ+γ of biased soft labels, incl. a trained biased teacher (NeurIPS 2023)",
    "intraclass": "intra-class contrastive teachers vs a λ = 0 teacher at equal training, and their KD students",
    "transfer": "partial parameter transfer vs scratch over ‖u‖ (or blend s), N₁ and N₂",
}
EXPERIMENTS: dict[str, ModuleType] = {
    "upllrs": upllrs_experiment,
    "softlabel": softlabel_experiment,
    "intraclass": intraclass_experiment,
    "transfer": transfer_experiment,
}
DEFAULT_DATASET = {"upllrs": "fashion-mnist", "softlabel": "fashion-mnist", "intraclass": "fashion-mnist"}


@dataclass(frozen=True)
class WeakLabelConfig:
    command: str
    dataset: str = "fashion-mnist"
    seed: int = 0
    num_seeds: int = 1
    json: str | None = None
    results_dir: str | None = None
    only: tuple[str, ...] = ()
    quick: bool = False
    threads: int = 1
    max_samples: int | None = None
    verbose: int = 0

    def __post_init__(self) -> None:
        if self.command not in COMMANDS:
            raise ConfigError(f"unknown command {self.command!r}; choose one of: {', '.join(COMMANDS)}")
        if self.dataset not in DATASETS:
            raise ConfigError(f"`--dataset` must be one of {', '.join(DATASETS)}, got {self.dataset!r}")
        if self.seed < 0:
            raise ConfigError(f"`--seed` must be >= 0, got {self.seed}")
        if not 1 <= self.num_seeds <= 100:
            raise ConfigError(f"`--num-seeds` must be in [1, 100], got {self.num_seeds}")
        if not 1 <= self.threads <= 256:
            raise ConfigError(f"`--threads` must be in [1, 256], got {self.threads}")
        if self.max_samples is not None and self.max_samples < 60:
            raise ConfigError(
                f"`--max-samples` must be >= 60 (6 per class for the 4:1:1 split), got {self.max_samples}"
            )
        for item in self.only:
            key, sep, value = item.partition("=")
            if not sep or not key or not value:
                raise ConfigError(f"`--only` takes KEY=VALUE, got {item!r}")

    @property
    def seeds(self) -> list[int]:
        return list(range(self.seed, self.seed + self.num_seeds))

    @property
    def filters(self) -> dict[str, str]:
        return dict(item.partition("=")[::2] for item in self.only)


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("refine-weaklabel", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=HelpFormatter)
        default = DEFAULT_DATASET.get(name, "synthetic")
        p.add_argument("--dataset", choices=DATASETS, default=default, help="data set")
        p.add_argument("--seed", type=int, default=0, help="first seed")
        p.add_argument("--num-seeds", type=int, default=1, help="run seeds S..S+N-1 and report mean ± std")
        p.add_argument(
            "--results-dir",
            metavar="DIR",
            help=f"write one result file per run to DIR/{name}/ (e.g. results/weaklabel)",
        )
        add_output(p, "also write every run and the tables to FILE (JSON)", "--json", dest="json", metavar="FILE")
        p.add_argument(
            "--only", metavar="KEY=VALUE", action="append", default=[],
            help="run only the jobs whose tag KEY equals VALUE (repeatable; e.g. --only mu=0.5)",
        )  # fmt: skip
        p.add_argument("--quick", action="store_true", help="tiny budgets: a smoke run in seconds, not a result")
        p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
        p.add_argument("--max-samples", type=int, help="class-balanced subset before the split (where one is used)")
        add_verbosity(p)
    return parser


def settings_for(cfg: WeakLabelConfig) -> Any:
    """The experiment's settings for this data set (tiny under `--quick`), with `--max-samples` applied."""
    module = EXPERIMENTS[cfg.command]
    s = module.quick_settings(cfg.dataset) if cfg.quick else module.default_settings(cfg.dataset)
    if cfg.max_samples is not None:
        if not hasattr(s, "max_samples"):
            raise ConfigError(f"`--max-samples` does not apply to `{cfg.command}`")
        s = dataclasses.replace(s, max_samples=cfg.max_samples)
    return s


def select(jobs: list[Job], filters: dict[str, str]) -> list[Job]:
    """Jobs whose tags match every KEY=VALUE filter; an unknown KEY is a usage error."""
    if not filters:
        return jobs
    known = set().union(*(job.tags for job in jobs)) if jobs else set()
    unknown = sorted(set(filters) - known)
    if unknown:
        raise ConfigError(f"`--only` key(s) {', '.join(unknown)} unknown here; tags are: {', '.join(sorted(known))}")
    return [j for j in jobs if all(str(j.tags.get(k)) == v for k, v in filters.items())]


def _finite(obj: Any) -> Any:
    """NaN/inf → None so the JSON file is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def run(cfg: WeakLabelConfig, command: str = "") -> tuple[list[RunResult], list[tuple[str, list[Any], list[str]]]]:
    """Plan the command's jobs over the seeds, run them with a progress bar, write result files, build tables."""
    torch.set_num_threads(cfg.threads)
    settings = settings_for(cfg)
    module = EXPERIMENTS[cfg.command]
    jobs = select(module.plan(cfg.dataset, cfg.seeds, settings), cfg.filters)
    if not jobs:
        raise ConfigError("no job matches the `--only` filters")
    if cfg.dataset != "synthetic":  # fail fast (with the install hint) before any training
        cached_dataset(cfg.dataset, cfg.seeds[0], None)
    out_dir = Path(cfg.results_dir) / cfg.command if cfg.results_dir else None
    commit = git_state()  # the code this process imported, whatever happens to the checkout while it runs
    results: list[RunResult] = []
    with tqdm(jobs, desc=f"{cfg.command} {cfg.dataset}", unit="job", disable=cfg.verbose < 0, file=sys.stderr) as bar:
        for job in bar:
            bar.set_postfix_str(job.name)
            done = job.run()
            if out_dir is not None:
                machine = machine_info(cfg.threads)
                for r in done:
                    write_result(
                        out_dir / f"{r.name}.json", metrics=r.metrics, config={**r.config, "quick": cfg.quick},
                        seed=r.seed, command=command, wall_s=r.wall_s, notes=r.notes, machine=machine,
                        root=out_dir.parent.parent, commit=commit,
                    )  # fmt: skip
            results += done
    return results, module.tables(flat_records(results))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)

    def body() -> int:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exc:  # --help
            return int(exc.code or 0)
        values = vars(args)
        values["only"] = tuple(values["only"])
        values["verbose"] = verbosity(args)
        del values["quiet"]
        cfg = WeakLabelConfig(**values)
        setup_logging(cfg.verbose)
        check_output(cfg.json, cfg.results_dir and Path(cfg.results_dir, cfg.command))  # before the runs
        start = time.perf_counter()
        command = shlex.join(["refine-weaklabel", *argv])
        results, tables = run(cfg, command)
        elapsed = time.perf_counter() - start
        out = [f"## refine-weaklabel {cfg.command} --dataset {cfg.dataset} (seeds {cfg.seeds[0]}..{cfg.seeds[-1]})"]
        for title, rows, cols in tables:
            out += ["", f"### {title}", "", markdown_table(rows, cols)]
        sys.stdout.write("\n".join(out) + "\n")
        logger.info("finished in %.1f s", elapsed)
        if cfg.json:
            payload = {
                "config": dataclasses.asdict(cfg),
                "settings": dataclasses.asdict(settings_for(cfg)),
                "command": command,
                "elapsed_s": elapsed,
                "versions": {"python": platform.python_version(), "torch": torch.__version__},
                "runs": [dataclasses.asdict(r) for r in results],
                "tables": [{"title": t, "columns": c, "rows": r} for t, r, c in tables],
            }
            write_json(cfg.json, _finite(payload))
            logger.info("wrote %s", cfg.json)
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
