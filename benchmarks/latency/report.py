"""Figures derived from the timed cases: per image, teacher ÷ model ratios, the headline and the notes.

Per image = text encoder + steps × denoiser step + VAE decode, from the medians of each part timed in one run (the
scheduler's arithmetic is not counted). A model that samples with guidance pairs runs the text encoder and every
step at batch 2; a few-step (guidance-embedded) student runs them at batch 1, `steps` times as its run recommends.
Presets use the teacher's text encoder and VAE decoder; ORT INT8 images use the ORT FP32 ones, as
`refine-export --int8` ships them. The spread of an image's time (`image_q1_s`, `image_q3_s`, `image_iqr_s`) comes
from the same sum taken round by round (every part is timed once per round).

A ratio between two timings counts as a difference only beyond the run's A-vs-A noise floor (`stats.beyond`); the
`*_beyond_noise` flags say which do.
"""

from typing import Any

from .config import RUNTIMES, TEACHER
from .stats import beyond, summarise

FEW_STEP_TARGET = 10.0  # issue 11: a few-step image ≥ 10× cheaper than the teacher's 20-step CFG image, ORT FP32


def case_of(report: dict[str, Any], model: str, runtime: str) -> dict[str, Any] | None:
    return next((c for c in report["cases"] if c["model"] == model and c["runtime"] == runtime), None)


def step_median(report: dict[str, Any], model: str, runtime: str, size: str, batch: int) -> float | None:
    case = case_of(report, model, runtime) or {}
    found = case.get("denoiser", {}).get(size, {}).get(str(batch))
    return found["median_s"] if found else None


def _components(report: dict[str, Any], model: str, runtime: str) -> dict[str, Any] | None:
    """The case holding the text encoder + VAE timings of a model's images: its own, or the teacher's (presets)."""
    owner = TEACHER if report["models"][model]["kind"] == "preset" else model
    case = case_of(report, owner, "ort-fp32" if runtime == "ort-int8" else runtime)
    return case if case and "vae_decode" in case else None


def per_image(report: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for model, info in report["models"].items():
        steps, batch = info["sampling"]["steps"], info["sampling"]["batch"]
        for runtime in RUNTIMES:
            parts = _components(report, model, runtime)
            for size in info["macs"]:
                step = step_median(report, model, runtime, size, batch)
                text = parts and parts["text_encoder"].get(str(batch))
                if step is None or not text:
                    continue
                te, vae = text["median_s"], parts["vae_decode"][size]["median_s"]
                image = te + steps * step + vae
                spread = _image_spread(report, model, runtime, size, batch, steps, parts)
                macs = info["macs"][size]
                row = {
                    "model": model,
                    "runtime": runtime,
                    "size": int(size),
                    "steps": steps,
                    "batch": batch,
                    "guidance": info["sampling"]["guidance"],
                    "text_encoder_s": te,
                    "step_s": step,
                    "denoise_s": steps * step,
                    "vae_decode_s": vae,
                    "image_s": image,
                    "vae_share": vae / image,
                    **spread,
                    "gmacs_image": (batch * macs["text_encoder"] + steps * batch * macs["step"] + macs["vae_decode"])
                    / 1e9,
                }
                if batch == 2:
                    row["image_cfg_s"] = image  # the name refine_control/demo.py reads
                rows.append(row)
    teacher = {(r["runtime"], r["size"]): r["image_s"] for r in rows if r["model"] == TEACHER}
    floor = report.get("noise_floor")
    for row in rows:
        same, fp32 = teacher.get((row["runtime"], row["size"])), teacher.get(("ort-fp32", row["size"]))
        row["teacher_over_model"] = same / row["image_s"] if same else None
        row["teacher_ort_fp32_over_model"] = fp32 / row["image_s"] if fp32 else None
        for key in ("teacher_over_model", "teacher_ort_fp32_over_model"):
            row[f"{key}_beyond_noise"] = beyond(row[key], floor)
    return rows


def _image_spread(
    report: dict[str, Any], model: str, runtime: str, size: str, batch: int, steps: int, parts: dict[str, Any]
) -> dict[str, float]:
    """Quartiles and IQR of the per-image time summed round by round (text encoder + steps × step + VAE decode of
    the same round); empty when the parts' samples are missing (a report from before the timing protocol)."""
    step_case = case_of(report, model, runtime) or {}
    series = [
        parts["text_encoder"][str(batch)].get("samples_s"),
        step_case["denoiser"][size][str(batch)].get("samples_s"),
        parts["vae_decode"][size].get("samples_s"),
    ]
    if not all(series):
        return {}
    rounds = min(len(x) for x in series)
    te, step, vae = (x[:rounds] for x in series)
    stats = summarise([te[r] + steps * step[r] + vae[r] for r in range(rounds)])
    return {"image_q1_s": stats["q1_s"], "image_q3_s": stats["q3_s"], "image_iqr_s": stats["iqr_s"]}


def achieved(report: dict[str, Any], case: dict[str, Any], size: str, batch: int) -> dict[str, float]:
    """GFLOP/s of one step at `batch` and its fraction of the measured peak of its precision."""
    macs = report["models"][case["model"]]["macs"][size]["step"]
    peak = report["peaks"]["int8_gops" if case["runtime"] == "ort-int8" else "fp32_gflops"]
    gflops = 2 * batch * macs / case["denoiser"][size][str(batch)]["median_s"] / 1e9
    return {"gflops": gflops, "fraction_of_peak": gflops / peak}


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def ratios(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Per step, like for like (batch 2 for models sampled in guidance pairs, batch 1 for few-step ones): teacher ÷
    model MACs and latency per runtime, PyTorch ÷ ORT FP32, ORT FP32 ÷ INT8."""
    teacher_info, rows = report["models"][TEACHER], []
    for model, info in report["models"].items():
        batch = info["sampling"]["batch"]
        for size, macs in info["macs"].items():
            step = {r: step_median(report, model, r, size, batch) for r in RUNTIMES}
            teacher = {r: step_median(report, TEACHER, r, size, batch) for r in RUNTIMES}
            rows.append(
                {
                    "model": model,
                    "size": int(size),
                    "batch": batch,
                    "macs_teacher_over_model": teacher_info["macs"][size]["step"] / macs["step"],
                    "params_teacher_over_model": teacher_info["params"]["denoiser"] / info["params"]["denoiser"],
                    "latency_teacher_over_model": {r: _ratio(teacher[r], step[r]) for r in RUNTIMES},
                    "latency_teacher_over_model_beyond_noise": {
                        r: beyond(_ratio(teacher[r], step[r]), report.get("noise_floor")) for r in RUNTIMES
                    },
                    "pytorch_over_ort_fp32": _ratio(step["pytorch"], step["ort-fp32"]),
                    "ort_fp32_over_ort_int8": _ratio(step["ort-fp32"], step["ort-int8"]),
                    "pytorch_over_ort_int8": _ratio(step["pytorch"], step["ort-int8"]),
                }
            )
    return rows


def headline(report: dict[str, Any]) -> dict[str, Any]:
    """Closing figures: fewest MACs; per image the fastest model against the teacher (ORT FP32) and every few-step
    model against the issue-11 target with its VAE share; ORT INT8 vs PyTorch FP32."""
    out: dict[str, Any] = {}
    students = [r for r in report["ratios"] if r["model"] != TEACHER]
    if students:
        best = max(students, key=lambda r: r["macs_teacher_over_model"])
        out["fewest_macs"] = {k: best[k] for k in ("model", "size", "macs_teacher_over_model")}
    images = [r for r in report["per_image"] if r["model"] != TEACHER and r["teacher_ort_fp32_over_model"]]
    if images:
        best = max(images, key=lambda r: r["teacher_ort_fp32_over_model"])
        keys = ("model", "runtime", "size", "image_s", "teacher_ort_fp32_over_model")
        out["fastest_image"] = {k: best[k] for k in (*keys, "teacher_ort_fp32_over_model_beyond_noise")}
    out["few_step"] = [
        {
            **{k: r[k] for k in ("model", "runtime", "size", "steps", "image_s", "vae_share", "teacher_over_model")},
            "beyond_noise": r["teacher_over_model_beyond_noise"],
            "target": FEW_STEP_TARGET,
        }
        for r in report["per_image"]
        if r["batch"] == 1 and r["runtime"] in ("ort-fp32", "ort-int8") and r["teacher_over_model"]
    ]
    int8 = {
        f"{r['model']}@{r['size']}": r["pytorch_over_ort_int8"] for r in report["ratios"] if r["pytorch_over_ort_int8"]
    }
    if int8:
        out["ort_int8_over_pytorch_fp32"] = int8
    return out


def notes(report: dict[str, Any]) -> list[str]:
    cfg, floor, machine = report["config"], report.get("noise_floor"), report["machine"]
    schedule = (
        "one case after another"
        if cfg.get("schedule") == "sequential"
        else "interleaved: each round runs every case once, round-robin"
    )
    out = [
        f"threads pinned to {cfg['threads']} (torch.set_num_threads, ORT intra_op_num_threads, inter_op 1); each case "
        f"in its own process, warm-up {cfg['warmup']}, then {cfg['repeats']} timed rounds ({schedule}); median, "
        "IQR (q1–q3) and p90",
        (
            f"A-vs-A noise floor: {floor['model']} {floor['runtime']} timed as a second case in the same run differs "
            f"from itself by up to {floor['percent']:.1f}% (median ÷ median, worst denoiser measurement); a ratio within "
            f"×{floor['factor']:.3f} either way is reported as no difference"
            if floor
            else "no A-vs-A noise floor was measured (its case failed or nothing was timed): no ratio is claimed"
        ),
        f"1-min load average {machine.get('load_average_1min')} at the start, "
        f"{machine.get('load_average_1min_end')} at the end, on {machine.get('logical_cpus')} logical CPUs"
        + (" (other work shared the cores)" if machine.get("load_warning") else ""),
        "per image = text encoder + steps × step + VAE decode (medians; the scheduler's arithmetic is not counted): "
        "guidance pairs run at batch 2, few-step students at batch 1; ORT INT8 images use the FP32 text encoder and "
        "VAE decoder",
        "presets have random weights (latency does not depend on weight values)",
    ]
    if cfg["scale"] == "sd15":
        out.append(
            "sd15 scale: SD1.5 UNet + ControlNet, CLIP ViT-L/14 text encoder and SD VAE configs, random weights"
        )
    out += [
        f"{c['model']} {c['runtime']}: {c.get('skipped') or c['error']}"
        for c in report["cases"]
        if "peak_rss_mb" not in c
    ]
    for name, info in report["models"].items():
        out += [f"{name} {key}: {f['skipped']}" for key, f in info["files"].items() if "skipped" in f]
        q = info["files"].get("denoiser_int8", {}).get("quantization")
        if q:
            out.append(
                f"{name} INT8: {q['format']} {', '.join(q['op_types'])} ({q['quantized_nodes']} nodes, selection "
                f"{q['selection']}; faster than FP32 in the quantiser's own check: {q['faster_than_fp32']})"
            )
    return out


def derive(report: dict[str, Any]) -> dict[str, Any]:
    report["per_image"] = per_image(report)
    report["ratios"] = ratios(report)
    report["headline"] = headline(report)
    report["notes"] = notes(report)
    return report
