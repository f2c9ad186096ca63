"""The report as markdown tables, and the few closing lines printed at the end of a run."""

from typing import Any

from .config import RUNTIMES
from .report import achieved


def _ms(timing: dict[str, float] | None) -> str:
    return "-" if not timing else f"{timing['median_s'] * 1e3:.1f} / {timing['p90_s'] * 1e3:.1f}"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}×"


def _header(report: dict[str, Any]) -> list[str]:
    m, peaks, cfg = report["machine"], report["peaks"], report["config"]
    return [
        f"# Latency: {cfg['scale']} scale",
        "",
        f"- CPU: {m['cpu']} ({m['logical_cpus']} logical CPUs; {', '.join(m['instruction_sets']) or 'no AVX'}; "
        f"torch capability {m['torch_cpu_capability']}); **{m['threads']} threads**",
        f"- torch {m['torch']}, onnxruntime {m['onnxruntime']}, Python {m['python']}; OMP_WAIT_POLICY "
        f"{m['omp_wait_policy']}; load average at start {m['load_average_1min']}",
        f"- measured peak (n = {peaks['n']}): FP32 {peaks['fp32_gflops']:.0f} GFLOP/s (best of "
        + ", ".join(f"{k} {v:.0f}" for k, v in peaks["fp32_by_kernel"].items())
        + f"), INT8 {peaks['int8_gops']:.0f} GOP/s (ORT MatMulInteger)",
        f"- MACs: {report['counter']}",
    ]


def _table(title: str, header: list[str], rows: list[list[str]]) -> list[str]:
    from refine_control.results import markdown_table

    return ["", title, "", markdown_table(header, rows)]


def step_table(report: dict[str, Any]) -> list[str]:
    header = ["model", "size", "runtime", "params (M)", "GMAC/step", "file (MB)", "step ms b1 (med / p90)"]
    header += ["step ms b2 (med / p90)", "GFLOP/s", "% of peak", "peak RSS (MB)"]
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
    header += ["image s", "VAE share", "GMAC", "teacher ÷ model (same runtime)", "teacher ORT FP32 ÷ model"]
    rows = [
        [
            r["model"], str(r["size"]), r["runtime"], f"{r['steps']} × {r['batch']}", f"{r['text_encoder_s'] * 1e3:.1f}",
            f"{r['denoise_s'] * 1e3:.1f}", f"{r['vae_decode_s'] * 1e3:.1f}", f"{r['image_s']:.3g}",
            f"{100 * r['vae_share']:.0f}%", f"{r['gmacs_image']:.2f}", _x(r["teacher_over_model"]),
            _x(r["teacher_ort_fp32_over_model"]),
        ]
        for r in report["per_image"]
    ]  # fmt: skip
    return _table("Per image, as each model samples (text encoder + steps × step + VAE decode):", header, rows)


def ratio_table(report: dict[str, Any]) -> list[str]:
    header = ["model", "size", "batch", "MACs teacher/model", "latency teacher/model (PyTorch, ORT FP32, ORT INT8)"]
    header += ["PyTorch/ORT FP32", "ORT FP32/INT8", "PyTorch FP32/ORT INT8"]
    rows = [
        [
            r["model"], str(r["size"]), str(r["batch"]), f"{r['macs_teacher_over_model']:.2f}×",
            ", ".join(_x(r["latency_teacher_over_model"][k]) for k in RUNTIMES), _x(r["pytorch_over_ort_fp32"]),
            _x(r["ort_fp32_over_ort_int8"]), _x(r["pytorch_over_ort_int8"]),
        ]
        for r in report["ratios"]
    ]  # fmt: skip
    return _table("Ratios per step, like for like (> 1 means the second is faster / smaller):", header, rows)


def markdown(report: dict[str, Any]) -> str:
    lines = [*_header(report), *step_table(report), *image_table(report), *ratio_table(report)]
    lines += ["", *(f"- {n}" for n in report["notes"])]
    return "\n".join(lines) + "\n"


def summary(report: dict[str, Any]) -> str:
    """The headline in a few plain lines."""
    h, lines = report["headline"], []
    if "fewest_macs" in h:
        f = h["fewest_macs"]
        lines.append(
            f"fewest MACs: {f['model']} at {f['size']}², {f['macs_teacher_over_model']:.2f}× fewer than the teacher"
        )
    if "fastest_image" in h:
        f = h["fastest_image"]
        lines.append(
            f"fastest image: {f['model']} ({f['runtime']}) at {f['size']}², {f['image_s']:.3g} s, "
            f"{f['teacher_ort_fp32_over_model']:.1f}× faster than the teacher's in ORT FP32"
        )
    for f in h.get("few_step", []):
        lines.append(
            f"few-step {f['model']} ({f['runtime']}, {f['steps']} steps, batch 1) at {f['size']}²: "
            f"{f['teacher_over_model']:.1f}× faster per image than the teacher's {report['config']['steps']}-step guided image in the same "
            f"runtime (target ≥ {f['target']:g}×); VAE decode {100 * f['vae_share']:.0f}% of its image"
        )
    for key, value in h.get("ort_int8_over_pytorch_fp32", {}).items():
        lines.append(f"ORT INT8 vs PyTorch FP32 per step, {key}: {value:.2f}×")
    return "\n".join(lines)
