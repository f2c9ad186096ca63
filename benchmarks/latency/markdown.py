"""The report as markdown tables, and the few closing lines printed at the end of a run.

A ratio is written with "×" only beyond the run's A-vs-A noise floor; within it, as "≈ 1 (1.04, noise)"."""

from typing import Any

from .config import RUNTIMES
from .report import achieved
from .stats import beyond


def _ms(timing: dict[str, float] | None) -> str:
    """Median and interquartile range in ms: `12.3 [12.1–12.6]`."""
    if not timing:
        return "-"
    if "q1_s" not in timing:
        return f"{timing['median_s'] * 1e3:.1f}"
    return f"{timing['median_s'] * 1e3:.1f} [{timing['q1_s'] * 1e3:.1f}–{timing['q3_s'] * 1e3:.1f}]"


def _x(value: float | None, floor: dict[str, Any] | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}×" if beyond(value, floor) else f"≈ 1 ({value:.2f}, noise)"


def floor_line(report: dict[str, Any]) -> str:
    floor = report.get("noise_floor")
    if not floor:
        return "- **A-vs-A noise floor: not measured**, so no ratio below is claimed as a difference"
    return (
        f"- **A-vs-A noise floor ±{floor['percent']:.1f}%**: {floor['model']} ({floor['runtime']}) timed as two cases "
        f"in this run; ratios within ×{floor['factor']:.3f} either way are shown as ≈ 1 (noise)"
    )


def _header(report: dict[str, Any]) -> list[str]:
    m, peaks, cfg = report["machine"], report["peaks"], report["config"]
    return [
        f"# Latency: {cfg['scale']} scale",
        "",
        f"- CPU: {m['cpu']} ({m['logical_cpus']} logical CPUs; {', '.join(m['instruction_sets']) or 'no AVX'}; "
        f"torch capability {m['torch_cpu_capability']}); **{m['threads']} threads**",
        f"- torch {m['torch']}, onnxruntime {m['onnxruntime']}, Python {m['python']}; OMP_WAIT_POLICY "
        f"{m['omp_wait_policy']}; 1-min load average at start {m['load_average_1min']}"
        + (f" (**warning**: {m['load_warning']})" if m.get("load_warning") else ""),
        floor_line(report),
        f"- timing: each case in its own process, {cfg['warmup']} warm-up, {cfg['repeats']} rounds "
        + ("one case after another" if cfg.get("schedule") == "sequential" else "interleaved round-robin over cases")
        + "; times are median [q1–q3] in ms",
        f"- measured peak (n = {peaks['n']}): FP32 {peaks['fp32_gflops']:.0f} GFLOP/s (best of "
        + ", ".join(f"{k} {v:.0f}" for k, v in peaks["fp32_by_kernel"].items())
        + f"), INT8 {peaks['int8_gops']:.0f} GOP/s (ORT MatMulInteger)",
        f"- MACs: {report['counter']}",
    ]


def _table(title: str, header: list[str], rows: list[list[str]]) -> list[str]:
    from refine_control.results import markdown_table

    return ["", title, "", markdown_table(header, rows)]


def step_table(report: dict[str, Any]) -> list[str]:
    header = ["model", "size", "runtime", "params (M)", "GMAC/step", "file (MB)", "step ms b1 (med [IQR])"]
    header += ["step ms b2 (med [IQR])", "GFLOP/s", "% of peak", "peak RSS (MB)"]
    rows = []
    for case in (c for c in report["cases"] if "denoiser" in c):
        info = report["models"][case["model"]]
        key = {"pytorch": None, "ort-fp32": "denoiser", "ort-int8": "denoiser_int8"}[case["runtime"]]
        mb = info["files"].get(key, {}).get("mb") if key else info["params"]["denoiser"] * 4 / 1e6
        for size, row in case["denoiser"].items():
            rate = achieved(report, case, size, info["sampling"]["batch"])
            rows.append(
                [
                    case["model"], size, case["runtime"], f"{info['params']['denoiser'] / 1e6:.1f}",
                    f"{info['macs'][size]['step'] / 1e9:.3f}", "-" if mb is None else f"{mb:.1f}",
                    _ms(row.get("1")), _ms(row.get("2")), f"{rate['gflops']:.1f}",
                    f"{100 * rate['fraction_of_peak']:.1f}%", f"{case['peak_rss_mb']:.0f}",
                ]
            )  # fmt: skip
    return _table("Per denoiser step (batch 1, and batch 2 = a classifier-free guidance pair):", header, rows)


def image_table(report: dict[str, Any]) -> list[str]:
    header = ["model", "size", "runtime", "steps × batch", "text encoder ms", "denoising ms", "VAE decode ms"]
    header += ["image s [IQR]", "VAE share", "GMAC", "teacher ÷ model (same runtime)", "teacher ORT FP32 ÷ model"]
    floor = report.get("noise_floor")
    rows = [
        [
            r["model"], str(r["size"]), r["runtime"], f"{r['steps']} × {r['batch']}", f"{r['text_encoder_s'] * 1e3:.1f}",
            f"{r['denoise_s'] * 1e3:.1f}", f"{r['vae_decode_s'] * 1e3:.1f}", _image_s(r),
            f"{100 * r['vae_share']:.0f}%", f"{r['gmacs_image']:.2f}", _x(r["teacher_over_model"], floor),
            _x(r["teacher_ort_fp32_over_model"], floor),
        ]
        for r in report["per_image"]
    ]  # fmt: skip
    return _table("Per image, as each model samples (text encoder + steps × step + VAE decode):", header, rows)


def _image_s(row: dict[str, Any]) -> str:
    if "image_q1_s" not in row:
        return f"{row['image_s']:.3g}"
    return f"{row['image_s']:.3g} [{row['image_q1_s']:.3g}–{row['image_q3_s']:.3g}]"


def ratio_table(report: dict[str, Any]) -> list[str]:
    header = ["model", "size", "batch", "MACs teacher/model", "latency teacher/model (PyTorch, ORT FP32, ORT INT8)"]
    header += ["PyTorch/ORT FP32", "ORT FP32/INT8", "PyTorch FP32/ORT INT8"]
    floor = report.get("noise_floor")
    rows = [
        [
            r["model"], str(r["size"]), str(r["batch"]), f"{r['macs_teacher_over_model']:.2f}×",
            ", ".join(_x(r["latency_teacher_over_model"][k], floor) for k in RUNTIMES),
            _x(r["pytorch_over_ort_fp32"], floor), _x(r["ort_fp32_over_ort_int8"], floor),
            _x(r["pytorch_over_ort_int8"], floor),
        ]
        for r in report["ratios"]
    ]  # fmt: skip
    title = "Ratios per step, like for like (> 1 means the second is faster / smaller; ≈ 1: within the noise floor):"
    return _table(title, header, rows)


def markdown(report: dict[str, Any]) -> str:
    lines = [*_header(report), *step_table(report), *image_table(report), *ratio_table(report)]
    lines += ["", *(f"- {n}" for n in report["notes"])]
    return "\n".join(lines) + "\n"


def summary(report: dict[str, Any]) -> str:
    """The headline in a few plain lines; "faster" only beyond the A-vs-A noise floor."""
    h, floor, lines = report["headline"], report.get("noise_floor"), []
    noise = f"±{floor['percent']:.1f}%" if floor else "not measured"
    lines.append(f"A-vs-A noise floor: {noise}")
    if report["machine"].get("load_warning"):
        lines.append(f"warning: {report['machine']['load_warning']}")
    if "fewest_macs" in h:
        f = h["fewest_macs"]
        lines.append(
            f"fewest MACs: {f['model']} at {f['size']}², {f['macs_teacher_over_model']:.2f}× fewer than the teacher"
        )
    if "fastest_image" in h:
        f = h["fastest_image"]
        ratio = f["teacher_ort_fp32_over_model"]
        lines.append(
            f"fastest image: {f['model']} ({f['runtime']}) at {f['size']}², {f['image_s']:.3g} s, "
            + (
                f"{ratio:.1f}× faster than the teacher's in ORT FP32"
                if beyond(ratio, floor)
                else f"not faster than the teacher's in ORT FP32 beyond the noise floor (ratio {ratio:.2f})"
            )
        )
    for f in h.get("few_step", []):
        ratio = f["teacher_over_model"]
        claim = (
            f"{ratio:.1f}× faster per image than"
            if beyond(ratio, floor)
            else f"within the noise floor of (ratio {ratio:.2f})"
        )
        lines.append(
            f"few-step {f['model']} ({f['runtime']}, {f['steps']} steps, batch 1) at {f['size']}²: {claim} the "
            f"teacher's {report['config']['steps']}-step guided image in the same runtime (target ≥ {f['target']:g}×); "
            f"VAE decode {100 * f['vae_share']:.0f}% of its image"
        )
    for key, value in h.get("ort_int8_over_pytorch_fp32", {}).items():
        lines.append(f"ORT INT8 vs PyTorch FP32 per step, {key}: {_x(value, floor)}")
    return "\n".join(lines)
