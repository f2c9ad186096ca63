"""INT8 (static QDQ, calibrated on real pipeline inputs) and FP16 versions of the denoiser.

INT8: per-channel int8 weights, uint8 activations, MinMax ranges from denoiser inputs captured while the FP32
pipeline ran on the run's own data. Which node types get quantised is *measured*: each candidate type (Conv,
weight MatMul, Gemm) is quantised alone, the whole graph is timed against FP32 on a real input and its output
error measured on captured inputs; only types that make it at least `MIN_SPEEDUP` faster on this CPU and stay
within `MAX_RELATIVE_ERROR` are kept. Attention MatMuls (activation × activation) always stay FP32. If no type
qualifies, the accurate types (or the most accurate one) are quantised anyway, for size, and the report says so.
Dynamic INT8 is not offered: ONNX Runtime's ConvInteger kernels are slower than its FP32 convolutions on x86.

FP16: onnxruntime's own converter (onnxconverter-common's output does not load in ORT here), keeping FP32
inputs/outputs. ONNX Runtime's CPU provider lacks FP16 kernels for most ops and inserts Casts back to FP32; the
report counts them, because on CPU the FP16 file is a size format, not a speed format.
"""

import contextlib
import logging
import shutil
import statistics
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from refine_control.errors import ExportError
from refine_control.export.spec import INT8_OP_TYPES
from refine_control.serve.runtime.session import ort_session
from refine_control.serve.runtime.timing import measure

logger = logging.getLogger(__name__)

MIN_SPEEDUP = 1.05
# Largest error an op type alone may add to the noise prediction (unit variance), as a fraction of the FP32
# output's standard deviation on captured inputs. Measured on the built-in student: MatMul alone 0.03 (images
# within 44 dB of FP32), Conv alone 0.2-0.65 (edge F1 at 63% of FP32): MinMax uint8 ranges over all timesteps
# are too coarse for some convolutions' activations.
MAX_RELATIVE_ERROR = 0.05
ERROR_FEEDS = 12
Feeds = dict[str, np.ndarray]


def max_relative_error(path: Path, feeds: Sequence[Feeds], reference: Sequence[np.ndarray], threads: int) -> float:
    """Max abs difference of `path`'s outputs on `feeds` from the FP32 `reference` outputs, over their std."""
    model = ort_session(path, threads=threads)
    scale = float(np.std(np.concatenate([r.ravel() for r in reference]))) or 1.0
    return max(float(np.abs(model.run(None, f)[0] - r).max()) for f, r in zip(feeds, reference, strict=True)) / scale


def compare_ms(paths: Sequence[Path], feeds: Feeds, threads: int, rounds: int = 3) -> list[float]:
    """Median ms per run of each model on `feeds`, measured in interleaved rounds (fairer on a busy machine)."""
    sessions = [ort_session(p, threads=threads) for p in paths]
    per_model: list[list[float]] = [[] for _ in paths]
    for _ in range(rounds):
        for session, times in zip(sessions, per_model, strict=True):
            times.append(measure(lambda s=session: s.run(None, feeds), warmup=2, budget_s=0.2).median_s * 1000)
    return [statistics.median(t) for t in per_model]


class _Reader:
    """onnxruntime CalibrationDataReader over captured feeds."""

    def __init__(self, feeds: list[Feeds]) -> None:
        self.feeds = feeds
        self.index = 0

    def get_next(self) -> Feeds | None:
        if self.index >= len(self.feeds):
            return None
        self.index += 1
        return self.feeds[self.index - 1]

    def rewind(self) -> None:
        self.index = 0

    def __len__(self) -> int:
        return len(self.feeds)


def _preprocess(fp32: Path, out: Path) -> dict[str, list[str]]:
    """ORT's quantisation pre-processing, unique node names, and the candidate nodes by group."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # Symbolic shape inference fails on these graphs ("Incomplete symbolic shape inference"); ONNX's is enough.
    with _quiet_root_logger():
        quant_pre_process(str(fp32), str(out), skip_symbolic_shape=True)
    model = onnx.load(str(out))
    initializers = {t.name for t in model.graph.initializer}
    groups: dict[str, list[str]] = {op: [] for op in INT8_OP_TYPES}
    used = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in groups:
            name = f"refine_node_{i}"
            while name in used:
                name += "_"
            node.name = name
            used.add(name)
        if node.op_type == "MatMul" and not any(x in initializers for x in node.input):
            continue  # activation × activation (attention scores / values): stays FP32
        if node.op_type in groups:
            groups[node.op_type].append(node.name)
    onnx.save(model, str(out))
    return {op: names for op, names in groups.items() if names}


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """onnxruntime.quantization logs every node at INFO on the root logger; keep that out of the CLI's output."""
    logging.disable(logging.INFO)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def _quantize(
    source: Path,
    out: Path,
    nodes: list[str],
    op_types: list[str],
    reader: _Reader,
    cache: Path,
) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    reader.rewind()
    with _quiet_root_logger():
        quantize_static(
            str(source),
            str(out),
            reader,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=op_types,
            nodes_to_quantize=nodes,
            per_channel=True,
            reduce_range=False,  # this CPU kind has VNNI; without VNNI set it (see quantize_static's docstring)
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            calibration_cache_path=str(cache),
        )


def quantize_int8(
    fp32: Path,
    out: Path,
    calibration: list[Feeds],
    timing_feeds: Feeds,
    *,
    op_types: Sequence[str] | None = None,
    threads: int = 2,
) -> dict[str, Any]:
    """Write the static QDQ INT8 model to `out`; returns the selection report (what was measured and kept)."""
    if not calibration:
        raise ExportError("INT8 calibration needs at least one captured input")
    reader = _Reader(calibration)
    with tempfile.TemporaryDirectory(prefix=".refine-int8-", dir=out.parent) as tmp_dir:
        tmp = Path(tmp_dir)
        pre = tmp / "pre.onnx"
        groups = _preprocess(fp32, pre)
        cache = tmp / "calibration.json"
        measured: dict[str, dict[str, Any]] = {}
        every = tmp / "all.onnx"
        if op_types is None:
            # Calibrate once over every candidate node; the per-type variants reuse the cached ranges.
            all_nodes = [n for names in groups.values() for n in names]
            _quantize(pre, every, all_nodes, list(groups), reader, cache)
            variants = {}
            for op in groups:
                variants[op] = tmp / f"{op}.onnx"
                _quantize(pre, variants[op], groups[op], [op], reader, cache)
            timings = compare_ms([pre, every, *variants.values()], timing_feeds, threads)
            error_feeds = calibration[:: max(1, len(calibration) // ERROR_FEEDS)][:ERROR_FEEDS]
            fp32 = ort_session(pre, threads=threads)
            reference = [fp32.run(None, f)[0] for f in error_feeds]  # once, shared by every variant
            fp32_ms, all_ms = timings[0], timings[1]
            for (op, path), ms in zip(variants.items(), timings[2:], strict=True):
                measured[op] = {
                    "nodes": len(groups[op]),
                    "fp32_ms": round(fp32_ms, 3),
                    "int8_ms": round(ms, 3),
                    "speedup": round(fp32_ms / ms, 3),
                    "relative_error": round(max_relative_error(path, error_feeds, reference, threads), 4),
                }
            measured["all candidates"] = {
                "nodes": len(all_nodes),
                "fp32_ms": round(fp32_ms, 3),
                "int8_ms": round(all_ms, 3),
                "speedup": round(fp32_ms / all_ms, 3),
            }
            accurate = [op for op in groups if measured[op]["relative_error"] <= MAX_RELATIVE_ERROR]
            chosen = [op for op in accurate if measured[op]["speedup"] >= MIN_SPEEDUP]
            faster = bool(chosen)
            if not chosen:
                chosen = accurate or [min(groups, key=lambda op: measured[op]["relative_error"])]
                logger.warning(
                    "no node type of this denoiser runs both faster and accurately in INT8 on this CPU; "
                    "quantising %s anyway: the INT8 file is smaller, not faster",
                    ", ".join(chosen),
                )
        else:
            unknown = sorted(set(op_types) - set(INT8_OP_TYPES))
            if unknown:
                raise ExportError(f"cannot quantise op types {unknown}; choose from {', '.join(INT8_OP_TYPES)}")
            chosen = [op for op in op_types if op in groups]
            faster = None
        if not chosen:
            raise ExportError(f"the denoiser has no nodes of the requested INT8 op types {list(op_types or [])}")
        nodes = [n for op in chosen for n in groups[op]]
        if op_types is None and set(chosen) == set(groups):
            shutil.copyfile(every, out)  # already built with exactly these nodes
        elif op_types is None and len(chosen) == 1:
            shutil.copyfile(tmp / f"{chosen[0]}.onnx", out)
        else:
            _quantize(pre, out, nodes, chosen, reader, cache)
    return {
        "format": "QDQ",
        "activations": "uint8 (asymmetric, MinMax calibration)",
        "weights": "int8 per channel",
        "calibration_inputs": len(calibration),
        "selection": "measured" if op_types is None else "requested",
        "min_speedup": MIN_SPEEDUP,
        "max_relative_error": MAX_RELATIVE_ERROR,
        "measured": measured,
        "op_types": chosen,
        "quantized_nodes": len(nodes),
        "faster_than_fp32": faster,
    }


def count_ops(path: Path) -> dict[str, int]:
    """Node counts by op type of an ONNX file."""
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def convert_fp16(fp32: Path, out: Path) -> dict[str, Any]:
    """Write the FP16 model (FP32 inputs/outputs kept); report the Casts the CPU provider inserts to run it."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True)
    onnx.save(model, str(out))
    casts_in_file = sum(1 for n in model.graph.node if n.op_type == "Cast")
    with tempfile.TemporaryDirectory(prefix=".refine-fp16-", dir=out.parent) as tmp_dir:
        optimized = Path(tmp_dir) / "optimized.onnx"
        ort_session(out, optimization="basic", save_optimized_to=optimized)
        casts_at_run = count_ops(optimized).get("Cast", 0)
    inserted = max(0, casts_at_run - casts_in_file)
    note = (
        f"ONNX Runtime's CPU provider inserts {inserted} Cast nodes to run FP16 ops in FP32; on CPU this file is "
        "for size (or for GPU / NNAPI / CoreML providers), not speed"
        if inserted
        else "the CPU provider runs this graph without inserting Casts"
    )
    return {
        "converter": "onnxruntime.transformers.float16",
        "casts_in_file": casts_in_file,
        "cpu_casts_inserted": inserted,
        "note": note,
    }
