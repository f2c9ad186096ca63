"""ONNX files of one model, written by the project's exporter and quantiser (never a second export path).

FP32: `refine_control.export.onnx_export.export_graphs` (all three graphs, as `refine-export` writes them). A preset
uses the teacher's text encoder and VAE decoder, so only its denoiser is exported, with the same per-graph call.
INT8: `refine_control.export.quantize.quantize_int8` (static QDQ), calibrated on the model's `Geometry` example
feeds over several seeds and timesteps (calibration ranges do not change latency).
"""

from pathlib import Path
from typing import Any

from .config import BenchConfig

PROTOBUF_LIMIT = 2 * 1024**3  # quantize_int8 writes single-file protobufs
TIMESTEPS = (999.0, 750.0, 500.0, 250.0, 50.0)


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:300]


def _mb(out: Path, graph: str) -> float:
    """A graph's file size, with its external data file if it has one."""
    return sum(f.stat().st_size for f in out.glob(f"{graph}.onnx*") if f.is_file()) / 1e6


def write_graphs(student: Any, graphs: list[str], out: Path, cfg: BenchConfig) -> None:
    """FP32 `graphs` of `student` into `out` (the model dir's file names); raises the exporter's `ExportError`."""
    from refine_control.export.onnx_export import export_graphs
    from refine_control.export.spec import DEFAULT_OPSET

    export_graphs(student, out, cfg.exporter, DEFAULT_OPSET, graphs)


def export_model(student: Any, graphs: list[str], int8_batch: int | None, out: Path, cfg: BenchConfig) -> dict:
    """Write `graphs` (and the INT8 denoiser when `int8_batch` is given: the batch it samples at); returns per file
    {"path", "mb"} or {"skipped": reason}. A failure skips that model's ORT cases, not the benchmark."""
    from refine_control.errors import RefineError
    from refine_control.runtime.layout import graph_file

    out.mkdir(parents=True, exist_ok=True)
    try:
        write_graphs(student, graphs, out, cfg)
    except RefineError as err:
        return {g: {"skipped": f"export failed: {_first_line(err)}"} for g in graphs}
    files: dict[str, Any] = {g: {"path": str(out / graph_file(g)), "mb": _mb(out, g)} for g in graphs}
    if int8_batch is not None and "denoiser" in files:
        files["denoiser_int8"] = quantize(student, files["denoiser"], int8_batch, out, cfg)
    return files


def calibration_feeds(geometry: Any, batch: int, n: int) -> list[dict[str, Any]]:
    """`n` example denoiser feeds from the model's geometry: a new seed each, timesteps spread over the schedule."""
    feeds = []
    for seed in range(n):
        feed = geometry.example_feeds("denoiser", batch=batch, seed=seed)
        feed["timestep"][:] = TIMESTEPS[seed % len(TIMESTEPS)]
        feeds.append(feed)
    return feeds


def speed_only(candidate: Path) -> dict[str, Any]:
    """The benchmark's image check: every set passes, so the fastest is kept. Its students have random weights,
    whose images mean nothing; `refine-export --int8` judges real students' images."""
    return {"accepted": True, "note": "speed only (random weights)"}


def quantize(student: Any, fp32: dict[str, Any], batch: int, out: Path, cfg: BenchConfig) -> dict[str, Any]:
    """Static QDQ INT8 of the FP32 denoiser with the project's quantiser."""
    from refine_control.export.quantize import Int8Options, quantize_int8
    from refine_control.runtime.layout import graph_file

    if fp32["mb"] * 1e6 >= PROTOBUF_LIMIT:
        return {"skipped": "FP32 graph over 2 GiB: quantize_int8 writes single-file protobufs (no external data)"}
    feeds = calibration_feeds(student.geometry, batch, cfg.calibration_feeds)
    path = out / graph_file("denoiser", "int8")
    try:
        report = quantize_int8(
            Path(fp32["path"]),
            path,
            feeds,
            feeds[0],
            check=speed_only,
            op_types=cfg.int8_ops,
            options=Int8Options(anyway=True),
            threads=cfg.threads,
        )
    except Exception as err:  # the quantiser raises many types; an INT8 failure skips that case only
        return {"skipped": f"INT8 quantisation failed: {_first_line(err)}"}
    return {"path": str(path), "mb": path.stat().st_size / 1e6, "quantization": report}
