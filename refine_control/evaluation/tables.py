"""Tables rendered from `results/presets/` (written by `benchmarks/presets.py`) into README.md."""

import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from refine_control.models.presets import STUDENT_PRESETS
from refine_control.results import Table, markdown_table, provenance, read_results, register_table

# The bar a compact student must meet (README, "Student presets"): ratios to the teacher on the same samples.
BAR = {"macs_fewer": 4.0, "edge_f1_kept": 0.90, "mask_iou_kept": 0.90, "colour_kept": 0.95, "shape_kept": 0.95}
BAR_TEACHER_PSNR_DB = 24.0


def kept(result: dict[str, Any]) -> dict[str, float]:
    """The student's ratios to the teacher, the teacher PSNR and the cost ratio of one run."""
    m, t = result["metrics"], result["metrics"]["teacher"]
    return {
        "macs_fewer": m["teacher_macs_per_step"] / m["macs_per_step"],
        "edge_f1_kept": m["edge_f1"] / t["edge_f1"],
        "mask_iou_kept": m["mask_iou"] / t["mask_iou"],
        "colour_kept": m["colour_acc"] / t["colour_acc"],
        "shape_kept": m["shape_acc"] / t["shape_acc"],
        "teacher_psnr_db": m["teacher_psnr_db"],
    }


def meets_bar(result: dict[str, Any]) -> bool:
    ratios = kept(result)
    return all(ratios[k] >= v for k, v in BAR.items()) and ratios["teacher_psnr_db"] >= BAR_TEACHER_PSNR_DB


def _stat(values: Sequence[float], fmt: Callable[[float], str]) -> str:
    if len(values) == 1:
        return fmt(values[0])
    return f"{fmt(statistics.fmean(values))} ± {fmt(statistics.stdev(values))}"


def _num(digits: int) -> Callable[[float], str]:
    return lambda v: f"{v:.{digits}f}"


@register_table("presets")
def presets_table(root: Path) -> Table:
    results = read_results("presets", root)
    by_preset: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_preset.setdefault(r["config"]["student"], []).append(r)
    header = [
        "preset", "params", "GMAC/step", "distil time", "edge F1 (kept)", "mask IoU (kept)", "colour acc",
        "shape acc", "PSNR vs teacher", "domain FID", "meets the bar", "use when",
    ]  # fmt: skip
    teacher = results[0]["metrics"]["teacher"]
    first = results[0]["metrics"]
    rows = [
        [
            "teacher", f"{first['teacher_params'] / 1e6:.2f} M", f"{first['teacher_macs_per_step'] / 1e9:.3f}", "-",
            f"{teacher['edge_f1']:.3f}", f"{teacher['mask_iou']:.3f}", f"{teacher['colour_acc']:.3f}",
            f"{teacher['shape_acc']:.3f}", "-", f"{teacher['domain_fid']:.2f}", "-", "the reference",
        ]
    ]  # fmt: skip
    for name in STUDENT_PRESETS.names():
        runs = by_preset.get(name)
        if not runs:
            continue
        m = [r["metrics"] for r in runs]
        k = [kept(r) for r in runs]
        preset = STUDENT_PRESETS.get(name)
        rows.append(
            [
                f"`{name}`",
                f"{m[0]['params'] / 1e6:.2f} M",
                f"{m[0]['macs_per_step'] / 1e9:.3f} ({k[0]['macs_fewer']:.2f}× fewer)",
                _stat([x["distil_s"] / 60 for x in m], _num(1)) + " min",
                _stat([x["edge_f1"] for x in m], _num(3)) + f" ({_stat([x['edge_f1_kept'] for x in k], _pct)})",
                _stat([x["mask_iou"] for x in m], _num(3)) + f" ({_stat([x['mask_iou_kept'] for x in k], _pct)})",
                _stat([x["colour_acc"] for x in m], _num(3)),
                _stat([x["shape_acc"] for x in m], _num(3)),
                _stat([x["teacher_psnr_db"] for x in m], _num(1)) + " dB",
                _stat([x["domain_fid"] for x in m], _num(2)),
                "yes" if all(meets_bar(r) for r in runs) else "no",
                preset.use_when,
            ]
        )
    seeds = sorted({r["seed"] for r in results})
    cfg = results[0]["config"]
    caption = (
        f"Built-in teacher; each student distilled with the CLI defaults ({cfg['max_steps']} steps, batch "
        f"{cfg['batch_size']}, learning rate {cfg['learning_rate']:g} {cfg['lr_schedule']}, init `{cfg['init']}`, "
        f"{cfg['builtin_labelled']} labelled shapes) with seeds {', '.join(map(str, seeds))} (mean ± std); "
        f"`refine-eval` on {cfg['eval']['num_samples']} held-out test shapes, {cfg['eval']['steps']} steps, guidance "
        f"{cfg['eval']['guidance_scale']:g}, the same noise for student and teacher. MACs per denoiser step at batch 1 "
        "(UNet + ControlNet). The bar: ≥ 4× fewer MACs, ≥ 90% of the teacher's edge F1 and mask IoU, ≥ 95% of its "
        "colour and shape accuracy, ≥ 24 dB PSNR vs the teacher, on every seed. Distil time: wall clock on 2 CPU "
        "cores. " + provenance(results)
    )
    return Table(markdown_table(header, rows), caption)


def _pct(value: float) -> str:
    return f"{100 * value:.0f}%"
