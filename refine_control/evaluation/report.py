"""The printed table, the JSON file and a sample grid of an evaluation."""

import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from refine_control.atomic import write_bytes, write_text

# Display order and names; a metric a benchmark does not have is left out.
METRICS = {
    "psnr_gt_db": "PSNR vs ground truth (dB) ↑",
    "ssim_gt": "SSIM vs ground truth ↑",
    "edge_precision": "edge precision vs control ↑",
    "edge_recall": "edge recall vs control ↑",
    "edge_f1": "edge F1 vs control (1 px) ↑",
    "edge_precision_strict": "edge precision, pixel-exact ↑",
    "edge_recall_strict": "edge recall, pixel-exact ↑",
    "edge_f1_strict": "edge F1, pixel-exact (ControlNet++) ↑",
    "edge_chamfer_px": "edge chamfer distance (px) ↓",
    "mask_iou": "foreground mask IoU ↑",
    "colour_delta_e": "colour error ΔE*ab in mask ↓",
    "colour_acc": "colour accuracy (oracle) ↑",
    "texture_acc": "texture accuracy (oracle) ↑",
    "shape_acc": "shape accuracy (oracle) ↑",
    "caption_acc": "prompted class accuracy (judge) ↑",
    "domain_fid": "domain FID (oracle features) ↓",
    "domain_kid": "domain KID (oracle features) ↓",
    "teacher_psnr_db": "PSNR vs teacher, same noise (dB) ↑",
    "teacher_ssim": "SSIM vs teacher, same noise ↑",
    "edge_f1_strict_kept": "pixel-exact edge F1 kept (model / teacher) ↑",
    "edge_f1_kept": "edge F1 (1 px) kept ↑",
    "mask_iou_kept": "mask IoU kept ↑",
    "colour_acc_kept": "colour accuracy kept ↑",
    "shape_acc_kept": "shape accuracy kept ↑",
    "texture_acc_kept": "texture accuracy kept ↑",
}


def _cell(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "inf"
    return f"{value:.2f}" if abs(value) >= 10 else f"{value:.3f}"


def format_table(report: dict[str, Any]) -> str:
    """A plain-text table: one row per metric, one column per model (and the real-data reference)."""
    columns: dict[str, dict[str, float]] = report["columns"]
    names = [m for m in METRICS if any(m in col for col in columns.values())]
    if report["benchmark"] == "folder":
        names = [m for m in names if not m.startswith("psnr_gt") and not m.startswith("ssim_gt")]
    label = {
        m: METRICS[m].replace("(oracle", "(judge") if report["benchmark"] == "folder" else METRICS[m] for m in names
    }
    width = max(len(v) for v in label.values())
    widths = [max(10, len(c)) for c in columns]
    head = f"{'metric':<{width}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(columns, widths, strict=True))
    lines = [head, "-" * len(head)]
    for m in names:
        cells = [_cell(col.get(m)) for col in columns.values()]
        lines.append(f"{label[m]:<{width}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True)))
    data = report["data"]
    where = f"held-out {data['split']} shapes" if report["benchmark"] == "shapes" else f"folder {data['folder']}"
    if not data.get("held_out", True):
        where += " (training data, not held out)"
    sampling = report["sampling"]
    settings = f"{sampling['steps']} steps, guidance {sampling['guidance_scale']}"
    teacher = (sampling.get("teacher_steps"), sampling.get("teacher_guidance_scale"))
    if "teacher" in columns and teacher != (sampling["steps"], sampling["guidance_scale"]):
        settings = f"{report['model']} {settings}, teacher {teacher[0]} steps, guidance {teacher[1]}"
    intervals = report["metrics"].get("intervals", {})
    kept = [f"{name} [{v[0]:.3f}, {v[1]:.3f}]" for name, v in intervals.items() if name != "method"]
    lines += [
        "",
        *([f"95% intervals: {'; '.join(kept)} ({intervals['method']})."] if kept else []),
        f"{report['num_samples']} samples of {where}; seed {report['seed']}; {settings}; same prompts, controls and "
        "initial noise for every model.",
        f"Note: {report['note']}.",
    ]
    return "\n".join(lines)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # "inf" / "nan": strict JSON has no infinities
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def write_report(path: str | Path, report: dict[str, Any]) -> None:
    """Write the report as strict JSON (infinite PSNR becomes the string "inf"), atomically."""
    write_text(path, json.dumps(_jsonable(report), indent=2, sort_keys=True, allow_nan=False) + "\n")


def write_grid(path: str | Path, images: dict[str, np.ndarray], count: int = 16) -> None:
    """A PNG with one row per entry of `images` (first `count` samples each), in its order."""
    rows = [np.concatenate(list(batch[:count]), axis=1) for batch in images.values()]
    buffer = io.BytesIO()
    Image.fromarray(np.concatenate(rows, axis=0)).save(buffer, format="PNG")
    write_bytes(path, buffer.getvalue())
