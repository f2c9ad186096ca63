"""What one benchmark run measures: `BenchConfig` (built by `cli.config_from_args`) and the fixed names."""

from dataclasses import dataclass

RUNTIMES = ("pytorch", "ort-fp32", "ort-int8")
SCALES = ("builtin", "sd15")
SCHEDULES = ("interleaved", "sequential")
TEACHER = "teacher"
FEW_STEP_SUFFIX = "+few-step"  # the sd15 scale's few-step case is named `<preset>+few-step`


@dataclass(frozen=True)
class BenchConfig:
    scale: str = "builtin"
    teacher: str = "builtin"  # builtin scale: the teacher to compare against (a pipeline dir also works)
    runs: tuple[tuple[str, str], ...] = ()  # (name, run dir) of trained students measured too
    presets: tuple[str, ...] | None = None  # None: every registered preset
    few_step_preset: str | None = None  # sd15: a preset measured as a few-step student too (None: none)
    few_step_steps: int = 4  # that case's sampling steps (batch 1, guidance scale embedded)
    runtimes: tuple[str, ...] = RUNTIMES
    sizes: tuple[int, ...] | None = None  # None: the teacher's own (builtin) or 256 and 512 (sd15)
    steps: int = 20  # denoiser steps per image of the teacher and of every student sampled with guidance pairs
    guidance_scale: float = 3.0  # fed to guidance-embedded denoisers without a recommendation of their own
    repeats: int = 10  # rounds: each times every measurement of every case once
    schedule: str = "interleaved"  # or "sequential": one case after another (one model in memory at a time)
    warmup: int = 2
    threads: int = 2
    exporter: str = "dynamo"
    int8_ops: tuple[str, ...] | None = None  # None: chosen per node as `refine-export --int8` does, by speed only
    calibration_feeds: int = 6  # INT8 calibration inputs (Geometry example feeds over seeds and timesteps)
    ort_models: tuple[str, ...] | None = None  # models whose denoiser runs in ORT (None: all)
    quality: tuple[tuple[str | None, str], ...] = ()  # (model name or None, refine-eval JSON)
    quality_metric: str = "edge_f1"
    json: str | None = None
    markdown: str | None = None
    plot: str | None = None
    results_name: str | None = None  # GROUP/NAME: also write results/GROUP/NAME.json (refine_control.results)
    results_dir: str = "results"
    workdir: str | None = None  # where ONNX files are written (default: a temp dir, removed at the end)
    worker_timeout: float = 3600.0
    gemm_size: int = 2048
