"""INT8 (static QDQ, calibrated on real pipeline inputs) and FP16 versions of the denoiser.

INT8: per-channel int8 weights, uint8 activations, ranges (percentile by default, or MinMax / entropy) from the
denoiser inputs captured while the FP32 pipeline ran on the run's own data, at every step of its sampling
trajectory. What gets quantised is chosen per node and measured on this CPU:

1. speed by node type: each candidate type (Conv, weight MatMul, Gemm) quantised alone and timed against FP32;
   types that do not make the graph faster are left out (attention MatMuls, activation × activation, always are);
2. sensitivity by node: the error each node's own quantisation adds to its output (export/int8_sensitivity.py);
   the first convolutions, the last compute nodes and the control-conditioning path always stay FP32;
3. candidate sets: nodes ranked by that error per multiply-accumulate they save, each set the best-ranked nodes
   up to 100 / 90 / 75 / 60 / 45 / 30 / 20 / 10 % of the MACs, timed together with FP32; their *images* are
   checked by `check` (the exporter's: edge F1 and PSNR against the FP32 pipeline's images on validation
   samples) from the smallest set up, until one fails; the fastest set that passed, and whose speed-up holds in a
   second, longer timing against FP32, is written.

When no set is both faster (≥ `min_speedup`) and accurate, no INT8 file is written unless `anyway` is set (then
the fastest accurate set, else the smallest; the report says it is not a speed format). `reduce_range` is the
caller's decision (refine_control/runtime/cpu.py: from the CPU the export runs on) and is recorded in the report.
Dynamic INT8 is not offered: ONNX Runtime's ConvInteger kernels are slower than its FP32 convolutions on x86.

FP16: onnxruntime's own converter (onnxconverter-common's output does not load in ORT here), keeping FP32
inputs/outputs. ONNX Runtime's CPU provider lacks FP16 kernels for most ops and inserts Casts back to FP32; the
report counts them, because on CPU the FP16 file is a size format, not a speed format.
"""

import contextlib
import io
import logging
import shutil
import statistics
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from refine_control.errors import ExportError
from refine_control.export.int8_sensitivity import node_costs, protected_nodes
from refine_control.export.spec import INT8_CALIBRATIONS, INT8_OP_TYPES
from refine_control.runtime.session import ort_session
from refine_control.runtime.timing import measure

logger = logging.getLogger(__name__)

MIN_SPEEDUP = 1.05
MAC_COVERAGE = (
    1.0,
    0.9,
    0.75,
    0.6,
    0.45,
    0.3,
    0.2,
    0.1,
)  # share of the ranked nodes' MACs each candidate set quantises
SENSITIVITY_FEEDS = 8
CONFIRM_ROUNDS = 9
RESIDENT_BYTES = 3_000_000_000  # above this many bytes of model files, candidates are timed one at a time
PERCENTILE = 99.999
CONTROL_INPUT, LATENT_INPUT = "controlnet_cond", "sample"
Feeds = dict[str, np.ndarray]
ImageCheck = Callable[[Path], dict[str, Any]]  # INT8 denoiser file → {"accepted": bool, ...metrics}


@dataclass(frozen=True)
class Int8Options:
    calibration: str = "percentile"
    reduce_range: bool = False
    reduce_range_reason: str = "off"
    min_speedup: float = MIN_SPEEDUP
    anyway: bool = False  # write the most accurate set even when none is both accurate and faster


def compare_ms(paths: Sequence[Path], feeds: Feeds, threads: int, rounds: int = 5) -> list[float]:
    """Median ms per run of each model on `feeds`. Small models are timed in interleaved rounds (fairer on a busy
    machine); when their files together exceed `RESIDENT_BYTES` (SD1.5-size graphs), one at a time, so that only
    one session's weights are in memory."""
    if sum(p.stat().st_size for p in paths) > RESIDENT_BYTES:
        out = []
        for path in paths:
            session = ort_session(path, threads=threads)
            out.append(measure(lambda s=session: s.run(None, feeds), warmup=2, budget_s=0.2 * rounds).median_s * 1000)
            del session
        return out
    sessions = [ort_session(p, threads=threads) for p in paths]
    per_model: list[list[float]] = [[] for _ in paths]
    for _ in range(rounds):
        for session, times in zip(sessions, per_model, strict=True):
            run = measure(lambda s=session: s.run(None, feeds), warmup=1, repeats=1, budget_s=0.2)
            times.append(run.median_s * 1000)
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


def _preprocess(fp32: Path, out: Path) -> tuple[Any, dict[str, list[str]]]:
    """ORT's quantisation pre-processing, unique node names; the model and its candidate nodes by type."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # Symbolic shape inference fails on these graphs ("Incomplete symbolic shape inference"); ONNX's is enough.
    # A graph with external data (over 2 GiB) keeps it external through ORT's temporary files, else they point to
    # a data file that is not beside them.
    graph = onnx.load(str(fp32), load_external_data=False).graph
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.initializer)
    options = {
        "save_as_external_data": True,
        "all_tensors_to_one_file": True,
        "external_data_location": out.name + ".data",
    }
    with _quiet_root_logger():
        quant_pre_process(str(fp32), str(out), skip_symbolic_shape=True, **(options if external else {}))
    model = onnx.load(str(out))
    initializers = {t.name for t in model.graph.initializer}
    groups: dict[str, list[str]] = {op: [] for op in INT8_OP_TYPES}
    used = {n.name for n in model.graph.node if n.name}
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            name = f"refine_node_{i}"
            while name in used:
                name += "_"
            node.name = name
            used.add(name)
        seen.add(node.name)
        if node.op_type == "MatMul" and not any(x in initializers for x in node.input):
            continue  # activation × activation (attention scores / values): stays FP32
        if node.op_type in groups:
            groups[node.op_type].append(node.name)
    onnx.save(model, str(out))
    return model, {op: names for op, names in groups.items() if names}


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """onnxruntime.quantization logs every node at INFO on the root logger and its calibraters print progress;
    keep both out of the CLI's output."""
    logging.disable(logging.INFO)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(logging.NOTSET)


@contextlib.contextmanager
def _temp_files_in(directory: str) -> Iterator[None]:
    """onnxruntime.quantization writes its augmented models to the system temp dir; keep them inside the export's
    own temp dir (nothing written outside the declared paths)."""
    previous = tempfile.tempdir
    tempfile.tempdir = directory
    try:
        yield
    finally:
        tempfile.tempdir = previous


class _Quantizer:
    """quantize_static with one calibration (ranges cached) for every node subset of one pre-processed graph."""

    def __init__(self, pre: Path, reader: _Reader, options: Int8Options, cache: Path) -> None:
        self.pre, self.reader, self.options, self.cache = pre, reader, options, cache

    def __call__(self, out: Path, nodes: Sequence[str], op_types: Sequence[str]) -> Path:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        method = {
            "minmax": CalibrationMethod.MinMax,
            "percentile": CalibrationMethod.Percentile,
            "entropy": CalibrationMethod.Entropy,
        }[self.options.calibration]
        extra = {"CalibPercentile": PERCENTILE} if self.options.calibration == "percentile" else {}
        self.reader.rewind()
        with _quiet_root_logger():
            quantize_static(
                str(self.pre),
                str(out),
                self.reader,
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(op_types),
                nodes_to_quantize=list(nodes),
                per_channel=True,
                reduce_range=self.options.reduce_range,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=method,
                calibration_cache_path=str(self.cache),
                extra_options=extra,
            )
        return out


def _evenly(items: list[Any], limit: int) -> list[Any]:
    if len(items) <= limit:
        return items
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, limit).round()]


def quantize_int8(
    fp32: Path,
    out: Path,
    calibration: list[Feeds],
    timing_feeds: Feeds,
    *,
    check: ImageCheck | None = None,
    op_types: Sequence[str] | None = None,
    options: Int8Options = Int8Options(),
    threads: int = 2,
) -> dict[str, Any]:
    """Write the static QDQ INT8 model to `out` (unless no set qualifies); returns what was measured and kept.

    `op_types` given: every candidate node of those types, no selection (benchmarks). Otherwise `check` judges
    each candidate set's images; the report's `written` says whether `out` exists."""
    if not calibration:
        raise ExportError("INT8 calibration needs at least one captured input")
    if options.calibration not in INT8_CALIBRATIONS:
        raise ExportError(f"unknown INT8 calibration {options.calibration!r}; one of {INT8_CALIBRATIONS}")
    report: dict[str, Any] = {
        "format": "QDQ",
        "activations": f"uint8 (asymmetric, {options.calibration} calibration)"
        + (f", percentile {PERCENTILE}" if options.calibration == "percentile" else ""),
        "weights": "int8 per channel",
        "calibration_inputs": len(calibration),
        **{k: v for k, v in asdict(options).items() if k != "anyway"},
    }
    with tempfile.TemporaryDirectory(prefix=".refine-int8-", dir=out.parent) as tmp_dir, _temp_files_in(tmp_dir):
        tmp = Path(tmp_dir)
        model, groups = _preprocess(fp32, tmp / "pre.onnx")
        quantize = _Quantizer(tmp / "pre.onnx", _Reader(calibration), options, tmp / "calibration.json")
        if op_types is not None:
            unknown = sorted(set(op_types) - set(INT8_OP_TYPES))
            if unknown:
                raise ExportError(f"cannot quantise op types {unknown}; choose from {', '.join(INT8_OP_TYPES)}")
            chosen = [op for op in op_types if op in groups]
            if not chosen:
                raise ExportError(f"the denoiser has no nodes of the requested INT8 op types {list(op_types)}")
            nodes = [n for op in chosen for n in groups[op]]
            quantize(out, nodes, chosen)
            return {
                **report,
                "selection": "requested",
                "op_types": chosen,
                "quantized_nodes": len(nodes),
                "faster_than_fp32": None,
                "written": True,
            }
        if check is None:
            raise ExportError("per-node INT8 selection needs an image check")
        selection = _select(model, groups, quantize, tmp, calibration, timing_feeds, check, options, threads)
        best = selection.pop("_path", None)
        if best is not None:
            shutil.copyfile(best, out)
    return {**report, "selection": "per node, measured", **selection, "written": best is not None}


def _select(
    model: Any,
    groups: dict[str, list[str]],
    quantize: _Quantizer,
    tmp: Path,
    calibration: list[Feeds],
    timing_feeds: Feeds,
    check: ImageCheck,
    options: Int8Options,
    threads: int,
) -> dict[str, Any]:
    """Steps 1-3 of the module docstring; `_path` is the chosen candidate's file (absent: nothing qualifies)."""
    pre = quantize.pre
    # 1. Speed by node type (calibrates once over every candidate; later subsets reuse the cached ranges).
    every = quantize(tmp / "all.onnx", [n for names in groups.values() for n in names], list(groups))
    per_type = {op: quantize(tmp / f"{op}.onnx", groups[op], [op]) for op in groups}
    fp32_ms, *type_ms = compare_ms([pre, *per_type.values()], timing_feeds, threads)
    by_type = {
        op: {"nodes": len(groups[op]), "int8_ms": round(ms, 3), "speedup": round(fp32_ms / ms, 3)}
        for op, ms in zip(per_type, type_ms, strict=True)
    }
    faster_alone = [op for op in groups if by_type[op]["speedup"] >= options.min_speedup]
    fast_types = faster_alone or list(groups)  # none faster alone: every type stays a candidate
    pool = [n for op in fast_types for n in groups[op]]

    # 2. Sensitivity by node; positional rules first. Ranked by error per MAC: cheap error, large savings first.
    protected = protected_nodes(model, pool, CONTROL_INPUT, LATENT_INPUT)
    costs = node_costs(
        pre, every, [n for n in pool if n not in protected], _evenly(calibration, SENSITIVITY_FEEDS), threads, tmp
    )
    ranked = sorted(costs, key=lambda n: costs[n].error_per_gmac)
    total_macs = sum(c.macs for c in costs.values()) or 1

    # 3. Candidate sets (the best-ranked nodes up to a share of the MACs), timed together, checked fastest first.
    sets: list[tuple[float, list[str]]] = []
    for coverage in MAC_COVERAGE:
        kept, covered = [], 0
        for n in ranked:
            if covered >= coverage * total_macs:
                break
            kept.append(n)
            covered += costs[n].macs
        if kept and all(kept != other for _, other in sets):
            sets.append((coverage, kept))
    op_of = {n: op for op, names in groups.items() for n in names}
    paths = [
        quantize(tmp / f"set{i}.onnx", nodes, sorted({op_of[n] for n in nodes})) for i, (_, nodes) in enumerate(sets)
    ]
    fp32_ms, *set_ms = compare_ms([pre, *paths], timing_feeds, threads)
    candidates = [
        {
            "mac_coverage": coverage,
            "quantized_nodes": len(nodes),
            "int8_ms": round(ms, 3),
            "speedup": round(fp32_ms / ms, 3),
        }
        for (coverage, nodes), ms in zip(sets, set_ms, strict=True)
    ]
    # Fewer nodes, fewer errors: check from the smallest set up and stop at the first that fails.
    accurate: list[int] = []
    for i in reversed(range(len(sets))):
        candidates[i]["check"] = check(paths[i])
        if not candidates[i]["check"]["accepted"]:
            break
        accurate.append(i)
    # A speed-up read off one timing pass on a busy machine can be noise: confirm it in a second, longer one.
    chosen: int | None = None
    for i in sorted((i for i in accurate if candidates[i]["speedup"] >= options.min_speedup), key=lambda i: set_ms[i]):
        fp32_again, int8_again = compare_ms([pre, paths[i]], timing_feeds, threads, rounds=CONFIRM_ROUNDS)
        candidates[i]["confirmed_speedup"] = round(fp32_again / int8_again, 3)
        if candidates[i]["confirmed_speedup"] >= options.min_speedup:
            chosen = i
            break
    faster = chosen is not None
    if chosen is None and options.anyway:  # the fastest accurate set, else the smallest (most accurate)
        chosen = min(accurate, key=lambda i: set_ms[i]) if accurate else len(sets) - 1
    result: dict[str, Any] = {
        "fp32_ms": round(fp32_ms, 3),
        "by_type": by_type,
        "op_types_faster_alone": faster_alone,
        "op_types_considered": fast_types,
        "protected": {reason: sum(1 for r in protected.values() if r == reason) for reason in set(protected.values())},
        "sensitivity": {
            "measure": "error a node's own quantisation adds to its output (RMS over channels of the relative "
            "error); ranked by that error per MAC",
            "worst": [[n, round(costs[n].error, 4), costs[n].macs] for n in ranked[::-1][:10]],
            "median_error": round(float(np.median([c.error for c in costs.values()])), 4) if costs else None,
        },
        "candidates": candidates,
        "faster_than_fp32": faster,
    }
    if chosen is None:
        return result
    nodes = sets[chosen][1]
    result.update(
        {
            "chosen": chosen,
            "op_types": sorted({op_of[n] for n in nodes}),
            "quantized_nodes": len(nodes),
            "fp32_nodes": {"protected": sorted(protected), "ranked_out": [n for n in ranked if n not in set(nodes)]},
            "_path": paths[chosen],
        }
    )
    return result


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
