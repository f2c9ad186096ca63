"""README tables rendered from `benchmarks/latency.py --results-name latency/NAME` result files: per-image time
of the teacher's guided image against each student's image as it samples (a few-step student: its own steps at
batch 1), every part timed in the same run."""

from pathlib import Path
from typing import Any

from refine_control.results import ResultsError, Table, markdown_table, provenance, read_results, register_table

RUNTIME_NAMES = {"pytorch": "PyTorch FP32", "ort-fp32": "ORT FP32", "ort-int8": "ORT INT8"}


def _result(root: Path, name: str) -> dict[str, Any]:
    found = [r for r in read_results("latency", root) if r["name"] == name]
    if not found:
        raise ResultsError(f"no result file results/latency/{name}.json")
    return found[0]


def _ms(seconds: float) -> str:
    return f"{1000 * seconds:.1f}"


def per_image_table(result: dict[str, Any], runtimes: tuple[str, ...]) -> Table:
    per_image = [r for r in result["metrics"]["per_image"] if r["runtime"] in runtimes]
    teacher = {(r["runtime"], r["size"]): r["image_s"] for r in per_image if r["model"] == "teacher"}
    # The teacher's image in ORT FP32 where it was exported, else in PyTorch (a full SD1.5 UNet is not exported).
    reference = "ort-fp32" if any(k[0] == "ort-fp32" for k in teacher) else "pytorch"
    rows = []
    for r in sorted(per_image, key=lambda r: (r["size"], r["model"] != "teacher")):  # else in the run's order
        base = teacher.get((reference, r["size"]))
        rows.append(
            [
                r["model"], RUNTIME_NAMES[r["runtime"]], f"{r['size']}²", str(r["steps"]),
                "2 (guidance pair)" if r["batch"] == 2 else "1 (scale embedded)",
                _ms(r["text_encoder_s"]), _ms(r["denoise_s"]), _ms(r["vae_decode_s"]), _ms(r["image_s"]),
                f"{100 * r['vae_share']:.0f}%", f"{base / r['image_s']:.1f}×" if base else "-",
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
        "within this table only). " + provenance([result])
    )
    return Table(markdown_table(header, rows), caption)


@register_table("few_step_latency")
def few_step_latency_table(root: Path) -> Table:
    return per_image_table(_result(root, "builtin-few-step"), ("ort-fp32", "ort-int8"))


@register_table("sd15_latency")
def sd15_latency_table(root: Path) -> Table:
    return per_image_table(_result(root, "sd15-512"), ("pytorch", "ort-fp32", "ort-int8"))
