"""README tables rendered from `benchmarks/latency.py --results-name latency/NAME` result files: per-image time
of the teacher's guided image against each student's image as it samples (a few-step student: its own steps at
batch 1), every part timed in the same run.

A ratio is written "N×" only beyond the run's A-vs-A noise floor (`benchmarks/latency/stats.py`: the same model
timed as two cases); within it as "≈ 1"; a result from before that protocol has no floor, so its ratios are shown
bare, without a claim, and its caption says so."""

from pathlib import Path
from typing import Any

from refine_control.results import ResultsError, Table, markdown_table, provenance, read_results, register_table

RUNTIME_NAMES = {"pytorch": "PyTorch FP32", "ort-fp32": "ORT FP32", "ort-int8": "ORT INT8"}


def _result(root: Path, name: str) -> dict[str, Any]:
    found = [r for r in read_results("latency", root) if r["name"] == name]
    if not found:
        raise ResultsError(f"no result file results/latency/{name}.json")
    return found[0]


def noise_floor(result: dict[str, Any]) -> dict[str, Any] | None:
    return result["metrics"].get("noise_floor")


def ratio_cell(value: float, floor: dict[str, Any] | None, digits: int = 1) -> str:
    """`value` (a ÷ b of two timings of one run) as a claim only where it lies beyond the run's noise floor."""
    if floor is None:
        return f"{value:.{digits}f} (no floor)"
    if max(value, 1 / value) > floor["factor"]:
        return f"{value:.{digits}f}×"
    return f"≈ 1 ({value:.2f}, noise)"


def floor_sentence(result: dict[str, Any]) -> str:
    floor = noise_floor(result)
    if floor is None:
        return (
            "No A-vs-A noise floor: this run predates the timing protocol (interleaved repeats, the same model timed "
            "twice), so its ratios are not claims. "
        )
    return (
        f"A-vs-A noise floor ±{floor['percent']:.1f}% ({floor['model']}, {RUNTIME_NAMES.get(floor['runtime'])}, timed "
        "as two cases of the run); ratios within it are shown as ≈ 1. "
    )


def _ms(seconds: float) -> str:
    return f"{1000 * seconds:.1f}"


def per_image_table(result: dict[str, Any], runtimes: tuple[str, ...]) -> Table:
    per_image = [r for r in result["metrics"]["per_image"] if r["runtime"] in runtimes]
    teacher = {(r["runtime"], r["size"]): r["image_s"] for r in per_image if r["model"] == "teacher"}
    # The teacher's image in ORT FP32 where it was exported, else in PyTorch (a full SD1.5 UNet is not exported).
    reference = "ort-fp32" if any(k[0] == "ort-fp32" for k in teacher) else "pytorch"
    rows, floor = [], noise_floor(result)
    for r in sorted(per_image, key=lambda r: (r["size"], r["model"] != "teacher")):  # else in the run's order
        base = teacher.get((reference, r["size"]))
        rows.append(
            [
                r["model"], RUNTIME_NAMES[r["runtime"]], f"{r['size']}²", str(r["steps"]),
                "2 (guidance pair)" if r["batch"] == 2 else "1 (scale embedded)",
                _ms(r["text_encoder_s"]), _ms(r["denoise_s"]), _ms(r["vae_decode_s"]), _ms(r["image_s"]),
                f"{100 * r['vae_share']:.0f}%", ratio_cell(base / r["image_s"], floor) if base else "-",
            ]
        )  # fmt: skip
    header = [
        "model", "runtime", "size", "steps", "passes per step", "text encoder ms", "denoising ms", "VAE decode ms",
        "image ms", "VAE share", f"teacher {RUNTIME_NAMES[reference]} image ÷ this",
    ]  # fmt: skip
    config = result["config"]
    caption = (
        "Per image = text encoder + steps × one denoiser pass + VAE decode, each the median of "
        f"{config['repeats']} timed runs after {config['warmup']} warm-up, {config['threads']} threads, all in one "
        f"run of `{result['command']}` on {result['machine'].get('cpu', 'this machine')} "
        f"({result['machine'].get('logical_cpus', '?')} logical CPUs; other jobs shared the cores, so compare rows "
        "within this table only). " + floor_sentence(result) + provenance([result])
    )
    return Table(markdown_table(header, rows), caption)


@register_table("few_step_latency")
def few_step_latency_table(root: Path) -> Table:
    return per_image_table(_result(root, "builtin-few-step"), ("ort-fp32", "ort-int8"))


@register_table("sd15_latency")
def sd15_latency_table(root: Path) -> Table:
    return per_image_table(_result(root, "sd15-512"), ("pytorch", "ort-fp32", "ort-int8"))
