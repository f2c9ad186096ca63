"""README table of the browser runtime's speed, rendered from `benchmarks/web_latency.py`'s result file: the
exported few-step student's image in headless Chromium (ONNX Runtime Web, WASM) against native ONNX Runtime on the
same machine, in one interleaved run."""

from pathlib import Path
from typing import Any

from refine_control.results import ResultsError, Table, markdown_table, provenance, read_results, register_table

WEB_RESULT = ("web", "builtin-few-step")


def _result(root: Path, group: str, name: str) -> dict[str, Any]:
    found = [r for r in read_results(group, root) if r["name"] == name]
    if not found:
        raise ResultsError(f"no result file results/{group}/{name}.json")
    return found[0]


def _ms(summary: dict[str, Any]) -> str:
    return f"{1000 * summary['median_s']:.0f} ({1000 * summary['q1_s']:.0f}–{1000 * summary['q3_s']:.0f})"


def _label(key: str, browser: dict[str, Any], config: dict[str, Any]) -> str:
    if key == "fp32":
        return "FP32"
    if key == "fp32 teacher":
        teacher = config["teacher"]
        return f"teacher, FP32 ({teacher['steps']} steps, guidance pair {teacher['guidance_scale']:g})"
    types = browser.get("int8_op_types")
    chosen = "every " + " and ".join(types) if isinstance(types, list) else "the export's per-node choice"
    return f"INT8, {chosen} ({browser.get('quantized_weights', '?')} weights)"


def _parity(browser: dict[str, Any]) -> str:
    return "identical" if browser.get("identical") else f"{browser['psnr_db']:.1f} dB"


def _vs_fp32(browser: dict[str, Any]) -> str:
    if "int8_vs_fp32_psnr_db" not in browser:
        return "-"
    value = browser["int8_vs_fp32_psnr_db"]
    return "identical" if value is None else f"{value:.1f} dB"


def _command(result: dict[str, Any]) -> str:
    """The command up to its output and note flags (the result file keeps the whole line)."""
    command = result["command"]
    cuts = [i for i in (command.find(" --json "), command.find(" --notes ")) if i >= 0]
    return command[: min(cuts)] if cuts else command


def _variants(metrics: dict[str, Any], config: dict[str, Any]) -> str:
    parts = []
    base = {"selftest": "1", "runs": "0", "precision": "fp32", "threads": str(config["threads"]), **config["page"]}
    for name, v in metrics.get("variants", {}).items():
        ratio = v.get("over_browser_same_precision")
        if ratio is None:
            continue
        query = ", ".join(f"{k}={val}" for k, val in v.get("query", {}).items() if base.get(k) != val)
        verdict = "a difference" if v.get("beyond_noise_floor") else "within noise"
        parts.append(f"{name} ({query}) {1000 * v['median_s']:.0f} ms, {ratio:.2f}× the default ({verdict})")
    return ("A/B cases of the same run: " + "; ".join(parts) + ". ") if parts else ""


def _teacher(metrics: dict[str, Any], config: dict[str, Any]) -> str:
    if "fp32 teacher" not in metrics["browser"]:
        return ""
    browser, native = metrics["browser"], metrics["native"]
    best = min(browser[key]["median_s"] for key in ("fp32", "int8") if key in browser)
    return (
        f"The teacher row: the built-in teacher exported the same way (`--teacher {config['teacher']['folder']}`), "
        f"as it is evaluated ({config['teacher']['scheduler']}); in the same rounds the student's best image is "
        f"{browser['fp32 teacher']['median_s'] / best:.1f}× faster than the teacher's in the browser and "
        f"{native['fp32 teacher']['median_s'] / native['fp32']['median_s']:.1f}× natively (FP32). "
    )


@register_table("web_latency")
def web_latency_table(root: Path) -> Table:
    result = _result(root, *WEB_RESULT)
    m, config = result["metrics"], result["config"]
    rows = []
    for key, browser in m["browser"].items():
        native = m["native"][key]
        rows.append(
            [
                _label(key, browser, config), _ms(browser), _ms(native), f"{m['browser_over_native'][key]:.1f}×",
                _parity(browser), _vs_fp32(browser),
            ]
        )  # fmt: skip
    header = [
        "denoiser", "browser ms / image (IQR)", "native ORT ms / image (IQR)", "browser ÷ native",
        "browser image vs Python's", "image vs FP32's",
    ]  # fmt: skip
    backend = next(iter(m["browser"].values())).get("backend") or {}
    floor = m.get("noise_floor")
    floor_text = (
        f"A-vs-A noise floor (the FP32 tab timed twice): {100 * (floor['factor'] - 1):.0f}%. " if floor else ""
    )
    # The targets concern the main folder's denoisers (what `refine-export --web` ships), not an `--also` export's.
    shipped = [key for key in m["browser"] if key in ("fp32", "int8")]
    best_ms = min(1000 * m["browser"][key]["median_s"] for key in shipped)
    best_ratio = min(m["browser_over_native"][key] for key in shipped)
    targets = m["targets"]
    machine = result["machine"]
    caption = (
        f"The built-in few-step student (`refine-export --web`; {config['steps']} steps, "
        f"{config['size'][0]}×{config['size'][1]}, guidance {config['guidance_scale']} embedded), one image from "
        f"text encoder to decoded pixels; median (IQR) of {config['runs']} rounds after one warm-up, every case once "
        f"per round. Browser: headless Chromium, ONNX Runtime Web, WASM with {backend.get('threads', '?')} threads, "
        f"SIMD {'on' if backend.get('simd') else 'off'}, {'' if backend.get('isolated') else 'not '}cross-origin "
        f"isolated; WebGPU "
        f"{m.get('webgpu', 'unknown')}. Native: `OnnxControlNetPipeline`, {config['threads']} threads, same graphs "
        "and draws. The last column: the Python runtime's image with that denoiser against its FP32 image (same "
        f"draws). Targets (under {targets['browser_ms_per_image_under']:.0f} ms, within "
        f"{targets['browser_over_native_under']:.0f}× of native), for the denoisers the export ships: best browser "
        f"image {best_ms:.0f} ms ({'met' if best_ms < targets['browser_ms_per_image_under'] else 'not met'}), best "
        f"ratio {best_ratio:.2f}× ({'met' if best_ratio < targets['browser_over_native_under'] else 'not met'}). "
        + _teacher(m, config)
        + _variants(m, config)
        + floor_text
        + f"One run of `{_command(result)}` on {machine.get('cpu', 'this machine')} "
        f"({machine.get('logical_cpus', '?')} logical CPUs, 1-min load average {m['load_average_1min_start']:.1f} "
        "at the start: shared, so read the ratios of this run, not the absolute times). " + provenance([result])
    )
    return Table(markdown_table(header, rows), caption)
