"""`refine-weaklabel`: run one paper's CPU-scale experiment over seeds and print its results table.

refine-weaklabel {upllrs,softlabel,intraclass,transfer} --dataset {digits,fashion-mnist,mnist,synthetic}
                 [--seed S] [--num-seeds N] [--json FILE] [--quick] [--threads T] [--max-samples N] [-v | -q]
"""

import argparse
import dataclasses
import logging
import math
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import torch
from tqdm import tqdm

from refine_control.atomic import write_json
from refine_control.cli_utils import run_cli, setup_logging
from refine_control.errors import ConfigError
from refine_control.weaklabel import (
    intraclass_experiment,
    softlabel_experiment,
    transfer_experiment,
    upllrs_experiment,
)
from refine_control.weaklabel.datasets import DATASETS
from refine_control.weaklabel.jobs import Job, cached_dataset
from refine_control.weaklabel.report import Record, markdown_table
from refine_control.weaklabel.training import FitConfig
from refine_control.weaklabel.transfer_model import GDConfig
from refine_control.weaklabel.upllrs import SeparationConfig

logger = logging.getLogger(__name__)

COMMANDS = {
    "upllrs": "UPLLRS vs PRODEN/CC/RC across unreliability rates (IJCAI 2023)",
    "softlabel": "student accuracy vs Δ+γ of biased soft labels (NeurIPS 2023)",
    "intraclass": "teacher with vs without the intra-class contrastive term, and its KD student",
    "transfer": "partial parameter transfer vs scratch across shared-signal strength",
}


@dataclass(frozen=True)
class WeakLabelConfig:
    command: str
    dataset: str = "digits"
    seed: int = 0
    num_seeds: int = 1
    json: str | None = None
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

    @property
    def seeds(self) -> list[int]:
        return list(range(self.seed, self.seed + self.num_seeds))


class _Parser(argparse.ArgumentParser):
    """Usage errors become a ConfigError: one `error:` line on stderr and exit code 2 (via run_cli)."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="refine-weaklabel", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        default = "synthetic" if name == "transfer" else "digits"
        p.add_argument("--dataset", choices=DATASETS, default=default, help=f"data set (default: {default})")
        p.add_argument("--seed", type=int, default=0, help="first seed (default: 0)")
        p.add_argument("--num-seeds", type=int, default=1, help="run seeds S..S+N-1 and report mean ± std")
        p.add_argument("--json", metavar="FILE", help="also write records and tables to FILE (atomically)")
        p.add_argument("--quick", action="store_true", help="tiny budgets: a smoke run in seconds, not a result")
        p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
        p.add_argument(
            "--max-samples", type=int, help="class-balanced subset before the 4:1:1 split (not used by transfer)"
        )
        p.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
        p.add_argument("-q", "--quiet", dest="verbose", action="store_const", const=-1, help="no progress bar")
    return parser


def settings_for(cfg: WeakLabelConfig) -> Any:
    """The experiment's settings for this data set, shrunk under `--quick`."""
    big = cfg.dataset in ("fashion-mnist", "mnist")
    default_n = 6000 if big else None
    n = cfg.max_samples if cfg.max_samples is not None else (600 if cfg.quick and big else default_n)
    tiny = FitConfig(epochs=3, batch_size=64, lr=3e-3, patience=0)
    if cfg.command == "upllrs":
        sep = SeparationConfig(epochs_per_step=5 if big else 10)
        s = upllrs_experiment.UPLLRSSettings(max_samples=n, separation=sep)
        if cfg.quick:
            s = dataclasses.replace(
                s,
                mus=(0.5,),
                hidden=(64,),
                fit=tiny,
                separation=SeparationConfig(epochs_per_step=1, max_steps=3, warmup_steps=1),
            )
        return s
    if cfg.command == "softlabel":
        s = softlabel_experiment.SoftLabelSettings(max_samples=n)
        if cfg.quick:
            s = dataclasses.replace(
                s, fit=tiny, rounds=1, biased_grid=s.biased_grid[:2], pll_grid=s.pll_grid[:1], noise_grid=(1.0,)
            )
        return s
    if cfg.command == "intraclass":
        s = intraclass_experiment.IntraClassSettings(max_samples=n)
        if cfg.quick:
            s = dataclasses.replace(
                s, lams=(0.0, 0.5), teacher_hidden=(64,), teacher_fit=tiny, student_fit=tiny, gating_epochs=1
            )
        return s
    s = transfer_experiment.TransferSettings()
    if cfg.quick:
        s = dataclasses.replace(
            s,
            alphas=(0.0, 1.0),
            shared=(0.0, 2.0),
            blend=(0.0, 1.0),
            dim=200,
            n_upstream=100,
            n_test=200,
            gd=GDConfig(steps=30),
        )
    return s


PLANNERS = {
    "upllrs": upllrs_experiment,
    "softlabel": softlabel_experiment,
    "intraclass": intraclass_experiment,
    "transfer": transfer_experiment,
}


def _finite(obj: Any) -> Any:
    """NaN/inf → None so the JSON file is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def run(cfg: WeakLabelConfig) -> tuple[list[Record], list[tuple[str, list[Record], list[str]]]]:
    """Plan the command's jobs over the seeds, run them with a progress bar, and build the tables."""
    torch.set_num_threads(cfg.threads)
    settings = settings_for(cfg)
    module = PLANNERS[cfg.command]
    if cfg.dataset != "synthetic":  # fail fast (with the install hint) before any training
        cached_dataset(cfg.dataset, cfg.seeds[0], None if cfg.command == "transfer" else settings.max_samples)
    jobs: list[Job] = module.plan(cfg.dataset, cfg.seeds, settings)
    records: list[Record] = []
    with tqdm(jobs, desc=f"{cfg.command} {cfg.dataset}", unit="job", disable=cfg.verbose < 0, file=sys.stderr) as bar:
        for job in bar:
            bar.set_postfix_str(job.name)
            records += job.run()
    return records, module.tables(records)


def main(argv: Sequence[str] | None = None) -> int:
    def body() -> int:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exc:  # --help
            return int(exc.code or 0)
        cfg = WeakLabelConfig(**vars(args))
        setup_logging(cfg.verbose)
        start = time.perf_counter()
        records, tables = run(cfg)
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
                "elapsed_s": elapsed,
                "versions": {"python": platform.python_version(), "torch": torch.__version__},
                "records": records,
                "tables": [{"title": t, "columns": c, "rows": r} for t, r, c in tables],
            }
            write_json(cfg.json, _finite(payload))
            logger.info("wrote %s", cfg.json)
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
