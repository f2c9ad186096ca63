"""README tables of the device side, rendered from result files: INT8 as `refine-export` chooses it on a trained
student (`benchmarks/int8.py`), INT8 per step at SD1.5 size (`benchmarks/latency.py`), fixed-shape against
dynamic sessions (`benchmarks/shapes.py`) and the size of the torch-free install (`benchmarks/install_size.py`)."""

from pathlib import Path
from typing import Any

from refine_control.evaluation.latency_tables import floor_sentence, noise_floor, ratio_cell
from refine_control.results import ResultsError, Table, markdown_table, provenance, read_results, register_table


def _result(root: Path, group: str, name: str) -> dict[str, Any]:
    found = [r for r in read_results(group, root) if r["name"] == name]
    if not found:
        raise ResultsError(f"no result file results/{group}/{name}.json")
    return found[0]


def _machine(result: dict[str, Any]) -> str:
    machine = result["machine"]
    return f"{machine.get('cpu', 'this machine')} ({machine.get('logical_cpus', '?')} logical CPUs)"


@register_table("int8_builtin")
def int8_builtin_table(root: Path) -> Table:
    result = _result(root, "int8", "builtin-compact-wide")
    metrics = result["metrics"]
    q = metrics["quantization"]
    rows = []
    for i, c in enumerate(q["candidates"]):
        check = c.get("check")
        rows.append(
            [
                f"{100 * c['mac_coverage']:.0f}%", str(c["quantized_nodes"]), f"{c['int8_ms']:.1f}",
                f"{c['speedup']:.2f}×",
                f"{c['confirmed_speedup']:.2f}×" if "confirmed_speedup" in c else "-",
                f"{check['psnr_db_min']:.1f}" if check and check.get("psnr_db_min") is not None else "-",
                f"{100 * check['edge_f1_ratio']:.1f}%" if check and "edge_f1_ratio" in check else "-",
                ("yes" if check["accepted"] else "no") if check else "not checked",
                "**chosen**" if q.get("chosen") == i else "",
            ]
        )  # fmt: skip
    header = [
        "MACs quantised", "nodes", "INT8 ms / step", "vs FP32", "confirmed", "PSNR vs FP32 (min)", "edge F1 vs FP32",
        "passes the bars", "",
    ]  # fmt: skip
    parity = metrics["parity"]
    settings, e2e, latency = parity["settings"], parity["end_to_end"], parity["latency_ms_per_denoiser_step"]
    if metrics["int8_written"]:
        held_out = (
            f"On the {settings['samples']} held-out parity samples the written INT8 denoiser keeps "
            f"{100 * metrics['int8_vs_fp32']['edge_f1_ratio']:.1f}% of the FP32 pipeline's edge F1 (images "
            f"{e2e['int8']['psnr_db_min'] or float('inf'):.1f} dB min PSNR vs PyTorch, FP32 "
            f"{e2e['fp32']['psnr_db_min'] or float('inf'):.1f} dB), and one denoiser step takes "
            f"{latency['onnxruntime int8']:.1f} ms against FP32's {latency['onnxruntime fp32']:.1f} ms "
            f"({metrics['int8_vs_fp32']['step_speedup']:.2f}×, parity's own timing). "
        )
    else:
        held_out = "No INT8 file was written: no set was both accurate and faster. "
    types = _considered_types(q)
    protected = ", ".join(f"{n} {reason}" for reason, n in sorted(q.get("protected", {}).items()))
    caption = (
        f"`refine-export --int8` on the trained built-in student ({result['config']['source_run']}: compact-wide, "
        f"the refine-distill defaults, seed 0): FP32 step {q['fp32_ms']:.1f} ms; {types}; kept FP32 by position: {protected}; the rest ranked by the error each node adds "
        f"per MAC it saves; sets checked on {result['config']['calibration_samples']} calibration samples "
        f"({settings['steps']} steps, guidance {settings['guidance_scale']}) from the smallest up; a passing set's "
        "speed-up is confirmed in a second, longer timing. "
        f"{held_out}One run of `{result['command']}` on {_machine(result)}; other jobs shared the cores. "
        + provenance([result])
    )
    return Table(markdown_table(header, rows), caption)


def _considered_types(q: dict[str, Any]) -> str:
    """Which node types the per-node selection considered, and why: those faster alone than FP32 in the quantiser's
    timing, or, when none was, all of them (the quantiser's fallback)."""
    bar = q.get("min_speedup", 1.0)
    by_type = q.get("by_type", {})
    faster = q.get("op_types_faster_alone", [op for op, t in by_type.items() if t["speedup"] >= bar])
    considered = ", ".join(q.get("op_types_considered", []))
    if faster:
        return f"node types faster alone (≥ {bar:g}× in the quantiser's timing) and so considered: {considered}"
    alone = ", ".join(f"{op} {t['speedup']:.2f}×" for op, t in by_type.items())
    return (
        f"no node type was faster alone by the {bar:g}× bar in the quantiser's timing ({alone}), so all were "
        f"considered: {considered}"
    )


def _int8_rows(result: dict[str, Any], model: str) -> list[list[str]]:
    """One row per batch: ORT FP32 and INT8 step time of `model` in a `benchmarks/latency.py` result."""
    cases = {c["runtime"]: c for c in result["metrics"]["cases"] if c["model"] == model and "denoiser" in c}
    q = result["metrics"]["models"][model]["files"]["denoiser_int8"]["quantization"]
    size = str(result["config"]["sizes"][0])
    nodes = f"{q['quantized_nodes']} ({', '.join(q['op_types'])}; {q['selection']})"
    rows = []
    for batch in ("1", "2"):
        a = cases["ort-fp32"]["denoiser"][size][batch]["median_s"]
        b = cases["ort-int8"]["denoiser"][size][batch]["median_s"]
        speedup = ratio_cell(a / b, noise_floor(result), digits=2)
        rows.append([f"`{result['name']}`", nodes, f"{size}²", batch, f"{1000 * a:.0f}", f"{1000 * b:.0f}", speedup])
    return rows


@register_table("sd15_int8")
def sd15_int8_table(root: Path) -> Table:
    chosen, whole = _result(root, "latency", "sd15-512-int8"), _result(root, "latency", "sd15-512")
    rows = _int8_rows(chosen, "compact-wide") + _int8_rows(whole, "compact-wide")
    header = ["run", "INT8 nodes", "size", "batch", "ORT FP32 ms / step", "ORT INT8 ms / step", "INT8 speed-up"]
    config = chosen["config"]
    caption = (
        "The SD1.5-size compact student (compact-wide, random weights: speed only), one denoiser step, median of "
        f"{config['repeats']} runs after {config['warmup']} warm-up, {config['threads']} threads, FP32 and INT8 in "
        "the same run; two runs: INT8 chosen per node by speed alone (random weights make images meaningless; the "
        "control-conditioning path, first and last layers kept FP32), and, in an earlier run, every Conv, MatMul "
        "and Gemm node quantised. Commands: "
        f"`{chosen['command']}`; `{whole['command']}`. On {_machine(chosen)}; other jobs shared the cores, so "
        "compare FP32 and INT8 within a run. "
        + "".join(dict.fromkeys(floor_sentence(r) for r in (chosen, whole)))
        + provenance([chosen, whole])
    )
    return Table(markdown_table(header, rows), caption)


@register_table("fixed_shapes")
def fixed_shapes_table(root: Path) -> Table:
    result = _result(root, "latency", "shapes-builtin")
    m = result["metrics"]
    rows = [
        [file, f"{g['dynamic_ms']:.2f}", f"{g['fixed_ms']:.2f}", f"{g['fixed_speedup']:.2f}×"]
        for file, g in m["graphs"].items()
    ]
    header = ["graph file", "dynamic axes ms", "fixed shape ms", "fixed ÷ dynamic speed"]
    caption = (
        f"The trained built-in student's model dir at its resolution {m['resolution']}², denoiser batch "
        f"{m['batch']}; median of {result['config']['rounds']} interleaved rounds. One run of `{result['command']}` "
        f"on {_machine(result)}. " + provenance([result])
    )
    return Table(markdown_table(header, rows), caption)


@register_table("device_install")
def device_install_table(root: Path) -> Table:
    runtime, serve = _result(root, "install", "runtime"), _result(root, "install", "serve")
    base, full = runtime["metrics"], serve["metrics"]
    largest = [name for name, _ in sorted(full["distributions_mb"].items(), key=lambda kv: -kv[1])[:5]]

    def column(m: dict) -> list[str]:
        sizes = [m["distributions_mb"].get(name) for name in largest]
        rest = m["site_packages_mb"] - sum(mb or 0.0 for mb in sizes)
        return [
            *("–" if mb is None else f"{mb:.1f}" for mb in sizes),
            f"{rest:.1f}",
            f"**{m['site_packages_mb']:.1f}**",
        ]

    names = [*largest, "everything else", "**site-packages in all**"]
    rows = [list(row) for row in zip(names, column(base), column(full), strict=True)]
    caption = (
        f"Fresh venvs (Python {runtime['config']['python']}) made without pip, with `pip install refine-control` "
        f"and `pip install refine-control[serve]` run from outside them; torch importable there: "
        f"{base['torch_importable'] or full['torch_importable']}. A plain `python -m venv` brings pip and setuptools "
        f"of its own: {base['plain_venv_mb']:.1f} MB more. " + provenance([runtime, serve])
    )
    return Table(markdown_table(["distribution", "runtime MB", "runtime + serve MB"], rows), caption)
