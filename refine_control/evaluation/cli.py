"""`refine-eval`: score a distilled student (and its teacher) with the same seeds, print a table, write JSON."""

import argparse
import logging
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

from refine_control.cli_parser import add_output, add_verbosity, new_parser, verbosity
from refine_control.cli_utils import check_output, offline_env, run_cli, setup_logging

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser(
        "refine-eval",
        description="Generate from held-out prompts and controls with a model and its teacher (same noise) and score "
        "them: on the built-in shapes, PSNR/SSIM vs the ground-truth render, edge P/R/F1 vs the control, mask IoU, "
        "colour error, oracle accuracies and domain FID/KID; on an image folder (--data), edge P/R/F1, fidelity to "
        "the teacher and domain FID/KID. Domain FID uses a small net trained on the benchmark, not Inception.",
        epilog="Examples: refine-eval runs/demo | refine-eval builtin --num-samples 256 | "
        "refine-eval runs/fashion --data data/fashion-test -o fashion.json",
    )
    parser.add_argument("target", metavar="RUN", help="a refine-distill run dir, `builtin`, or a pipeline directory")
    parser.add_argument("--num-samples", type=int, default=256, help="images per model (>= 64). Default: %(default)s")
    parser.add_argument("--seed", type=int, default=0, help="picks the samples and the noise. Default: %(default)s")
    parser.add_argument("--data", default=None, metavar="DIR", help="score on this captioned image folder instead")
    parser.add_argument(
        "--teacher", default=None, help="compare with this teacher (`builtin` or a dir). Default: the run's teacher"
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="the model's sampling steps. Default: its own recommendation (a few-step student's sampling.json), "
        "else the teacher's",
    )
    parser.add_argument(
        "--guidance-scale",
        type=float,
        default=None,
        help="the model's guidance scale (classifier-free, or the embedded scale of a guidance-distilled student). "
        "Default: its own recommendation, else the teacher's",
    )
    parser.add_argument(
        "--first-timestep",
        type=int,
        default=None,
        metavar="T",
        help="a few-step (LCM) student's first timestep: its steps are spaced over the training grid at or below T. "
        "Default: its own recommendation, else LCM's own (from T - 1)",
    )
    parser.add_argument("--teacher-steps", type=int, default=20, help="the teacher's steps. Default: %(default)s")
    parser.add_argument(
        "--teacher-guidance-scale", type=float, default=3.0, help="the teacher's guidance. Default: %(default)s"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="images per pipeline call. Default: %(default)s")
    parser.add_argument(
        "--oracle-steps", type=int, default=600, help="training steps of the judge net. Default: %(default)s"
    )
    parser.add_argument(
        "--split",
        choices=("val", "test"),
        default="test",
        help="built-in shapes: `val` to choose a recipe, `test` to report it. Default: %(default)s",
    )
    add_output(
        parser,
        "write the report (JSON) here. Default: RUN/eval/metrics.json for a run, else none",
        "--json",
        type=Path,
        default=None,
        metavar="FILE",
    )
    parser.add_argument(
        "--grid",
        type=Path,
        default=None,
        metavar="PNG",
        help="save a PNG of the first 16 samples: controls, teacher, model",
    )
    add_verbosity(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(verbosity(args))
    offline_env()

    def body() -> int:
        from refine_control.evaluation.evaluate import EvalConfig, evaluate
        from refine_control.evaluation.report import format_table, write_grid, write_report

        cfg = EvalConfig(**{f.name: getattr(args, f.name) for f in fields(EvalConfig)})
        check_output(args.output, args.grid)  # before the generation, not after it
        result = evaluate(cfg)
        print(format_table(result.report))  # noqa: T201 - the command's output
        json_path = args.output
        if json_path is None and (Path(cfg.target) / "student").is_dir():
            json_path = Path(cfg.target) / "eval" / "metrics.json"
        if json_path is not None:
            write_report(json_path, result.report)
            logger.info("report written to %s", json_path)
        if args.grid is not None:
            rows = {"control": result.controls} if result.controls is not None else {}
            teacher_first = sorted(result.images, key=lambda label: label != "teacher")
            write_grid(args.grid, {**rows, **{label: result.images[label] for label in teacher_first}})
            logger.info("samples written to %s", args.grid)
        return 0

    return run_cli(body)
