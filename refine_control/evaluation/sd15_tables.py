"""The README table of the SD1.5 rehearsal (`benchmarks/sd15_rehearsal.py`): every console command on a teacher of
SD1.5 geometry with random weights, its seconds per step, peak memory and wall time, from `results/sd15/`."""

from pathlib import Path
from typing import Any

from refine_control.results import ResultsError, Table, markdown_table, provenance, read_results, register_table

STAGES = (
    ("compact_fp32", "compact student, fp32", "refine-distill --teacher DIR"),
    ("compact_bf16", "compact student, bf16 autocast", "refine-distill --teacher DIR --mixed-precision bf16"),
    ("compact_single_file", "compact student, single files", "refine-distill --teacher model.safetensors --controlnet cn.safetensors"),
    ("few_step", "few-step stage", "refine-distill --from RUN --few-step"),
)  # fmt: skip


def _num(value: Any, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _rows(result: dict[str, Any]) -> list[list[str]]:
    m, size = result["metrics"], result["config"]["size"]
    rows = []
    for key, what, command in STAGES:
        stage = m.get("stages", {}).get(key)
        if stage is None:
            continue
        if "skipped" in stage:
            rows.append([f"{size}²", what, f"`{command}`", f"skipped: {stage['skipped']}", "-",
                         _num(stage["memory_estimate_gib"]), "-"])  # fmt: skip
            continue
        failed = stage.get("exit_code") != 0
        rows.append([f"{size}²", what, f"`{command}`", "FAILED" if failed else _num(stage.get("sec_per_step_median")),
                     _num(stage.get("peak_rss_gib")), _num(stage["memory_estimate_gib"]), _num(stage.get("wall_s"), 0)])  # fmt: skip
    export = m.get("export")
    if export is not None:
        ok = export["exit_code"] == 0
        int8 = ok and "denoiser.int8.onnx" in export.get("files_mib", {})
        what = ("export, INT8 " + ("written" if int8 else "not written (not faster and accurate)") + ", parity "
                + ("passed" if ok and export["parity"]["passed"] else "FAILED"))  # fmt: skip
        rows.append([f"{size}²", what, "`refine-export RUN -o MODEL --int8`", "-", _num(export["peak_rss_gib"]), "-",
                     _num(export["wall_s"], 0)])  # fmt: skip
    serve = m.get("serve")
    if serve is not None:
        ok = serve.get("http_status") == 200
        what = f"one image through `POST /v1/generate` ({serve.get('steps', '?')} steps)" if ok else "serve FAILED"
        rows.append([f"{size}²", what, "`refine-serve MODEL`", f"{_num(serve.get('elapsed_s'), 2)} s per image",
                     _num(serve["peak_rss_gib"]), "-", _num(serve.get("startup_s"), 0) + " to start"])  # fmt: skip
    return rows


def _bf16(result: dict[str, Any]) -> str:
    stages = result["metrics"].get("stages", {})
    fp32, bf16 = stages.get("compact_fp32", {}), stages.get("compact_bf16", {})
    if not (fp32.get("sec_per_step_median") and bf16.get("sec_per_step_median")):
        return ""
    ratio = bf16["sec_per_step_median"] / fp32["sec_per_step_median"]
    return (
        f"At {result['config']['size']}², bf16 autocast took {ratio:.1f}× the fp32 time per step on this CPU, for a "
        f"memory estimate of {bf16['memory_estimate_gib']:.1f} instead of {fp32['memory_estimate_gib']:.1f} GiB "
        f"(peak RSS {_num(bf16.get('peak_rss_gib'))} vs {_num(fp32.get('peak_rss_gib'))} GiB). "
    )


def _estimate(result: dict[str, Any]) -> str:
    """How the measured peak RSS of each training command compares with its `--dry-run` estimate."""
    stages = [
        s for s in result["metrics"].get("stages", {}).values() if s.get("peak_rss_gib") and s.get("exit_code") == 0
    ]
    if not stages:
        return ""
    ratios = [s["peak_rss_gib"] / s["memory_estimate_gib"] for s in stages]
    return (
        f"At {result['config']['size']}², the training commands' peak RSS was {min(ratios):.2f}–{max(ratios):.2f}× "
        "their `--dry-run` memory estimate, which the check before a run relies on: it is low by that much. "
    )


def _decoders(result: dict[str, Any]) -> str:
    t = result["metrics"].get("image_time")
    if not t:
        return ""
    sd, tiny = t["sd_vae"], t["tiny_random"]
    return (
        f"At {t['resolution']}², one {t['steps']}-step image in ONNX Runtime ({t['precision']} denoiser, median of "
        f"{result['config']['repeats']}): {sd['image_s']:.2f} s with the SD VAE decoder (decode {sd['decode_s']:.2f} "
        f"s, {100 * sd['decode_share']:.0f}% of the image), {tiny['image_s']:.2f} s with a tiny decoder in its place "
        f"(decode {tiny['decode_s']:.2f} s; diffusers' `AutoencoderTiny()` with TAESD's default config and random "
        "weights: its time, not its image). "
    )


@register_table("sd15_rehearsal")
def sd15_rehearsal_table(root: Path) -> Table:
    results = [r for r in read_results("sd15", root) if r["name"].startswith("rehearsal-")]
    if not results:
        raise ResultsError("no result file results/sd15/rehearsal-*.json")
    results.sort(key=lambda r: r["config"]["size"])
    rows = [row for r in results for row in _rows(r)]
    header = ["size", "step", "command", "s per step (median)", "peak RSS GiB", "estimate GiB", "wall s"]
    first = results[0]
    config = first["config"]
    caption = (
        "Random weights: SD1.5's UNet, CLIP ViT-L/14 text encoder, VAE and a canny ControlNet built from their "
        "published configs (nothing can be downloaded here), saved as a diffusers dir and as single-file "
        "checkpoints; this proves the code path, the memory and the time per step, not image quality. Batch 1, "
        f"{config['steps']} compact (1 from single files) and {config['few_step_steps']} few-step steps (the first includes warm-up), the "
        "compact-wide student; peak RSS is the kernel's maximum resident set of each command; estimate: the "
        "command's own `--dry-run` memory estimate, checked against the memory available before it started. "
        + "".join(_estimate(r) + _bf16(r) + _decoders(r) for r in results)
        + "Commands: "
        + "; ".join(f"`{r['command']}`" for r in results)
        + f". On {first['machine'].get('cpu', '?')} ({first['machine'].get('logical_cpus', '?')} logical CPUs, "
        f"1-min load average {first['machine'].get('load_average_1min', '?')} at the end: shared). "
        + provenance(results)
    )
    return Table(markdown_table(header, rows), caption)
