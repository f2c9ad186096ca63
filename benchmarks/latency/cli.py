"""The command line: `python benchmarks/latency.py [options]` (or `python -m benchmarks.latency`)."""

import argparse
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from .config import FEW_STEP_SUFFIX, RUNTIMES, SCALES, SCHEDULES, TEACHER, BenchConfig

QUICK = {"warmup": 1, "repeats": 2, "steps": 2, "exporter": "torchscript", "int8_ops": "Conv,MatMul,Gemm"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="benchmarks/latency.py",
        description="Latency and cost of the teacher vs the student presets, few-step students and trained runs in "
        "PyTorch FP32, ONNX Runtime FP32 and ONNX Runtime INT8, per step and per image as each model samples. "
        "Cases are timed round-robin; one model is also timed as a second case, and the spread between the two "
        "(the A-vs-A noise floor) decides which ratios are reported as speed-ups.",
    )
    p = parser.add_argument
    p("--scale", choices=SCALES, default="builtin", help="builtin: the shipped teacher; sd15: SD1.5-size, random")
    p("--teacher", default="builtin", help="builtin scale: `builtin` or a pipeline dir. Default: %(default)s")
    p("--run", action="append", default=[], metavar="NAME=DIR", help="a refine-distill run to measure too")
    p("--presets", default=None, help="comma-separated student presets (default: all; `none` for none)")
    p(
        "--few-step-preset",
        default=None,
        help="a preset also measured as a few-step student (guidance embedding, batch 1, --few-step-steps steps); "
        "`none` for none. Default: the default student preset at sd15 scale, none at builtin",
    )
    p("--few-step-steps", type=int, default=4, help="that case's steps per image. Default: %(default)s")
    p("--runtimes", default=",".join(RUNTIMES), help="comma-separated subset of: " + ", ".join(RUNTIMES))
    p("--size", type=int, action="append", default=None, help="image size (repeatable). Default: the teacher's")
    p("--steps", type=int, default=None, help="steps per image with guidance pairs (teacher, presets). Default: 20")
    p("--repeats", type=int, default=None, help="timed repeats (rounds) per measurement. Default: 10")
    p(
        "--schedule",
        choices=SCHEDULES,
        default="interleaved",
        help="interleaved: every case in its own process, timed round-robin, one repeat of each per round (every "
        "model held in memory at once); sequential: one case after another. Default: %(default)s",
    )
    p("--warmup", type=int, default=None, help="untimed runs first. Default: 2")
    p("--threads", type=int, default=2, help="threads for torch and ONNX Runtime. Default: %(default)s")
    p("--exporter", choices=("dynamo", "torchscript"), default=None, help="ONNX exporter. Default: dynamo")
    p(
        "--int8-ops",
        default=None,
        help="`measured` (the default: per node as refine-export, judged by speed alone since the "
        "benchmark's weights are random) or node types to quantise whole, e.g. Conv,MatMul",
    )
    p(
        "--ort-models",
        default=None,
        help="comma-separated models whose denoiser is exported and run in ONNX Runtime (default: all); e.g. at sd15 "
        "scale the compact presets only, since a full-UNet graph takes minutes to export and is over 2 GiB",
    )
    p("--quality", action="append", default=[], metavar="[NAME=]FILE", help="refine-eval JSON for the plot")
    p("--quality-metric", default="edge_f1", help="metric of the quality files to plot. Default: %(default)s")
    p("--json", default=None, help="write the report here (atomic)")
    p("--markdown", default=None, help="write the markdown tables here (atomic)")
    p("--plot", default=None, help="latency vs quality PNG (default with --quality: beside --json); needs matplotlib")
    p("--results-name", default=None, metavar="GROUP/NAME", help="also write results/GROUP/NAME.json (result file)")
    p("--results-dir", default="results", help="root of --results-name. Default: %(default)s")
    p("--workdir", default=None, help="parent of the temp dir for ONNX files (default: the system temp dir)")
    p(
        "--quick",
        action="store_true",
        help="smoke test: 1 warm-up, 2 repeats, 2 steps, a small peak probe, torchscript export, INT8 without "
        "selection (flags given explicitly win)",
    )
    return parser


def _named(text: str) -> tuple[str | None, str]:
    name, sep, value = text.partition("=")
    return (name, value) if sep else (None, text)


def _names(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(x.strip() for x in text.split(",") if x.strip())


def _check_numbers(args: argparse.Namespace) -> None:
    from refine_control.errors import ConfigError

    for name in ("steps", "repeats", "threads", "few_step_steps"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        raise ConfigError(f"--warmup must be >= 0, got {args.warmup}")
    if args.size is not None and any(s < 8 for s in args.size):
        raise ConfigError(f"--size must be >= 8, got {min(args.size)}")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    from refine_control.errors import ConfigError
    from refine_control.export.spec import INT8_OP_TYPES
    from refine_control.models.presets import STUDENT_PRESETS
    from refine_control.results import split_results_name
    from refine_control.training.config import DistillConfig, read_run_config

    quick = QUICK if args.quick else {"warmup": 2, "repeats": 10, "steps": 20, "exporter": "dynamo"}
    for key, value in quick.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    _check_numbers(args)
    runtimes = _names(args.runtimes) or ()
    if not runtimes or set(runtimes) - set(RUNTIMES):
        raise ConfigError(f"--runtimes {args.runtimes!r}: choose from {', '.join(RUNTIMES)}")
    runs = []
    for text in args.run:
        name, run = _named(text)
        if not name or not run:
            raise ConfigError(f"--run {text!r}: expected NAME=DIR")
        read_run_config(Path(run))
        runs.append((name, run))
    if args.scale == "sd15" and runs:
        raise ConfigError("--run is for the builtin scale (trained runs have their own teacher's size)")
    presets = None if args.presets is None else () if args.presets == "none" else _names(args.presets)
    few_step = args.few_step_preset or (DistillConfig.student if args.scale == "sd15" else "none")
    for preset in (*(presets or ()), *([few_step] if few_step != "none" else [])):
        STUDENT_PRESETS.get(preset)
    names = [TEACHER, *(presets if presets is not None else STUDENT_PRESETS.names()), *(n for n, _ in runs)]
    names += [few_step + FEW_STEP_SUFFIX] if few_step != "none" else []
    if len(set(names)) != len(names):
        raise ConfigError(f"model names must be unique, got {names}")
    for _, file in map(_named, args.quality):
        if not Path(file).is_file():
            raise ConfigError(f"--quality {file}: no such file")
    plot = args.plot
    if args.quality and plot is None:
        if args.json is None:
            raise ConfigError("--quality needs --plot PNG (or --json, beside which the plot is written)")
        plot = str(Path(args.json).with_suffix(".png"))
    int8_ops = None if args.int8_ops in (None, "measured") else _names(args.int8_ops)
    if int8_ops is not None and (not int8_ops or set(int8_ops) - set(INT8_OP_TYPES)):
        raise ConfigError(f"--int8-ops {args.int8_ops!r}: use `measured` or some of {', '.join(INT8_OP_TYPES)}")
    ort_models = _names(args.ort_models)
    if ort_models is not None and set(ort_models) - set(names):
        unknown = ", ".join(sorted(set(ort_models) - set(names)))
        raise ConfigError(f"--ort-models: unknown model {unknown}; measured models: {', '.join(names)}")
    if args.results_name is not None:
        split_results_name(args.results_name)
    cfg = BenchConfig(
        scale=args.scale,
        teacher=args.teacher,
        runs=tuple(runs),
        presets=presets,
        few_step_preset=None if few_step == "none" else few_step,
        few_step_steps=args.few_step_steps,
        runtimes=runtimes,
        sizes=tuple(args.size) if args.size else None,
        steps=args.steps,
        repeats=args.repeats,
        schedule=args.schedule,
        warmup=args.warmup,
        threads=args.threads,
        exporter=args.exporter,
        int8_ops=int8_ops,
        ort_models=ort_models,
        quality=tuple(_named(q) for q in args.quality),
        quality_metric=args.quality_metric,
        json=args.json,
        markdown=args.markdown,
        plot=plot,
        results_name=args.results_name,
        results_dir=args.results_dir,
        workdir=args.workdir,
    )
    return replace(cfg, gemm_size=256, calibration_feeds=2) if args.quick else cfg


def main(argv: Sequence[str] | None = None) -> int:
    from refine_control.cli_utils import offline_env, run_cli, setup_logging

    args = build_parser().parse_args(argv)
    setup_logging(-1)
    offline_env()
    # The ONNX exporter logs every op it cannot register and warns about pytree internals; torch sets its loggers'
    # levels when imported, so this imports it first.
    from refine_control.export.exporter import quiet_exporter_logs

    quiet_exporter_logs()

    def body() -> int:
        from refine_control.atomic import write_json, write_text
        from refine_control.results import git_state

        from . import plot, record
        from .cases import model_specs
        from .markdown import markdown, summary
        from .run import run_benchmark

        started, commit = time.perf_counter(), git_state()
        cfg = config_from_args(args)
        scores = plot.read_quality(cfg, [spec.name for spec in model_specs(cfg)]) if cfg.quality else {}
        report = run_benchmark(cfg, progress=sys.stderr.isatty())
        report["command"] = shlex.join(["python", "benchmarks/latency.py", *(sys.argv[1:] if argv is None else argv)])
        report["quality"] = {
            "metric": cfg.quality_metric,
            "scores": scores,
            "points": plot.quality_points(report, scores),
        }
        table = markdown(report)
        if cfg.json:
            write_json(cfg.json, report)
        if cfg.markdown:
            write_text(cfg.markdown, f"Command: `{report['command']}`\n\n{table}")
        if cfg.results_name:
            path = record.write(report, cfg.results_name, cfg.results_dir, time.perf_counter() - started, commit)
            print(f"result file: {path}")
        print(table)
        print(summary(report))
        if (
            report["quality"]["points"]
            and cfg.plot
            and not plot.plot_quality(report["quality"]["points"], cfg.quality_metric, Path(cfg.plot))
        ):
            print(plot.MISSING)
        failed = [c for c in report["cases"] if "error" in c]
        return 1 if failed and len(failed) == len(report["cases"]) else 0

    return run_cli(body)
