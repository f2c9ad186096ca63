"""`refine-distill --dry-run`: the resolved recipe and its estimated cost, printed; and the memory check a normal
run makes before it starts. Both read only configs (training/estimate.py) and write nothing."""

import sys
from typing import Any

import torch

from refine_control.errors import ConfigError
from refine_control.training.config import DistillConfig
from refine_control.training.estimate import (
    GIB,
    MEASURED_MARGIN,
    estimate,
    machine_memory,
    measured_matmul_rate,
    meta_teacher,
)
from refine_control.training.scale import SCALES


def _m(params: int) -> str:
    return f"{params / 1e6:.2f} M"


def _g(macs: float) -> str:
    return f"{macs / 1e9:.2f} G"


def plan_lines(
    cfg: DistillConfig, why: str, report: dict[str, Any], rate: float, memory: tuple[int, str], margin: float = 1.0
) -> list[str]:
    """The dry run's report as text lines (`key: value` where a line has one value)."""
    scale = SCALES[cfg.scale]
    teacher, student = report["teacher"], report["student"]
    size = report["resolution"]
    lines = [
        "dry run: nothing is trained or written",
        f"teacher: {cfg.teacher}" + (f" + controlnet {cfg.controlnet}" if cfg.controlnet else ""),
        f"scale: {scale.name} ({scale.description}; chosen by {why})",
        f"recipe: {cfg.recipe}" + (" (--from " + str(cfg.from_run) + ")" if cfg.from_run else ""),
        f"  {'stage':14s} {'steps':>7s} {'lr':>9s} {'batch':>6s} {'resolution':>10s} {'memory GiB':>10s} "
        f"{'s/step >=':>9s}",
    ]
    for stage in report["stages"]:
        batch = f"{stage.batch_size}x{cfg.grad_accum}" if cfg.grad_accum > 1 else str(stage.batch_size)
        lines.append(
            f"  {stage.name:14s} {stage.steps:7d} {stage.learning_rate:9.3g} {batch:>6s} {stage.resolution:>10d} "
            f"{stage.memory_total / GIB:10.2f} {stage.step_macs / rate:9.3g}"
        )
    tiny = report["tiny_decoder"]
    if cfg.recipe == "fast" and cfg.from_run is None:
        lines.append(
            f"tiny decoder: {'added' if tiny['added'] else 'not added'} (--tiny-decoder-stage "
            f"{cfg.tiny_decoder_stage}; decode {100 * tiny['decode_share']:.0f}% of a 4-step image's MACs, a tiny "
            f"decoder cuts them {tiny['gain']:.2f}x)"
        )
    if "stage 2" not in [s.name for s in report["stages"]] and cfg.stage2_steps is None and not cfg.from_run:
        lines.append("stage 2: half of the stage-1 steps if the data holds unlabelled images (rows without a caption)")
    s_unet = "shares the teacher's UNet" if student["shares_teacher_unet"] else f"UNet {_m(student['unet_params'])}"
    lines += [
        f"teacher params: UNet {_m(teacher['unet_params'])} + ControlNet {_m(teacher['controlnet_params'])}",
        f"student params: {student['preset']}: {s_unet} + ControlNet {_m(student['controlnet_params'])}",
        f"MACs per denoiser step at {size} px, batch 1: teacher {_g(teacher['step_macs'])}, student "
        f"{_g(student['step_macs'])} ({teacher['step_macs'] / max(1, student['step_macs']):.1f}x fewer)",
    ]
    total, where = memory
    peak = max(report["stages"], key=lambda s: s.memory_total)
    parts = ", ".join(f"{k.replace('_', ' ')} {v / GIB:.2f}" for k, v in peak.memory.items() if v)
    planned = peak.memory_total * margin
    verdict = "fits" if planned <= total else "DOES NOT FIT"
    lines += [
        f"memory estimate: {peak.memory_total / GIB:.2f} GiB per process (stage {peak.name}: {parts} GiB; "
        "formula: docs/distill.md); "
        + (
            f"planned for {planned / GIB:.2f} GiB ({margin:g}x: measured peak RSS ran to 1.58x the formula)"
            if margin != 1.0
            else "no margin (GPU memory was never measured against the formula)"
        ),
        f"this machine: {total / GIB:.1f} GiB {where}: {verdict}",
    ]
    lines.append(
        f"time per step (s/step >=): a lower bound, each step's MACs at this machine's measured matmul rate "
        f"({rate / 1e9:.0f} GMAC/s); convolutions and attention run slower"
    )
    return lines


def _margin() -> float:
    """The measured margin applies to CPU runs (peak RSS); no GPU run has been measured against the formula."""
    return 1.0 if torch.cuda.is_available() else MEASURED_MARGIN


def _report(cfg: DistillConfig, macs: bool = True) -> dict[str, Any]:
    teacher = meta_teacher(cfg.teacher, cfg.controlnet, cfg.teacher_config, cfg.allow_pickle_weights)
    return estimate(cfg, teacher, macs)


def print_plan(cfg: DistillConfig, why: str) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    report = _report(cfg)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.mixed_precision, torch.float32)
    if device.type == "cpu" and dtype == torch.float16:
        dtype = torch.float32  # fp16 mixed precision runs on GPUs only
    for line in plan_lines(cfg, why, report, measured_matmul_rate(device, dtype), machine_memory(), _margin()):
        print(line, file=sys.stdout)  # noqa: T201 - the dry run's output is its report


def check_memory(cfg: DistillConfig) -> None:
    """Refuse to start a run whose memory estimate exceeds the machine's memory."""
    report = _report(cfg, macs=False)
    total, where = machine_memory()
    peak = max(report["stages"], key=lambda s: s.memory_total)
    margin = _margin()
    planned = peak.memory_total * margin
    if planned > total:
        raise ConfigError(
            f"the memory estimate of this run, {planned / GIB:.1f} GiB per process ({peak.memory_total / GIB:.1f} "
            f"GiB by the formula x {margin:g}, the margin measured peaks needed; stage {peak.name}, "
            f"batch {peak.batch_size}, {peak.resolution} px), exceeds this machine's {total / GIB:.1f} GiB {where}",
            hint="lower --batch-size (raise --grad-accum to keep the batch), use --mixed-precision bf16, a smaller "
            "--resolution or student; see the estimate with --dry-run, or pass --ignore-memory-estimate",
        )
