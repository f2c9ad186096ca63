"""The one place ONNX Runtime sessions are made (runtime, exporter, quantiser, parity, benchmark): CPU provider,
pinned threads, errors-only logging, and no session option taken from the model file."""

import os
from pathlib import Path
from typing import Any

from refine_control.errors import ConfigError

OPTIMIZATION_LEVELS = ("none", "basic", "all")


def default_threads() -> int:
    """The CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def ort_session(
    model: str | bytes | Path,
    *,
    threads: int | None = None,
    optimization: str = "all",
    config: dict[str, str] | None = None,
    save_optimized_to: Path | None = None,
    disabled_optimizers: list[str] | None = None,
    fixed_dims: dict[str, int] | None = None,
) -> Any:
    """An `onnxruntime.InferenceSession` on the CPU provider.

    `model` is a path or the file's bytes; a `.ort` path is loaded as ORT format. `config` holds extra session
    config entries; `save_optimized_to` writes the optimised graph (how ORT-format and FP16 files are made).
    Never registers a custom-op library; refuses to run when `ORT_LOAD_CONFIG_FROM_MODEL` would let the file choose
    its own options. `fixed_dims` pins symbolic input dimensions by name (ORT's free-dimension overrides), so the
    session plans for one shape; `fixed_dims_for` derives them from example feeds."""
    import onnxruntime as ort

    if os.environ.get("ORT_LOAD_CONFIG_FROM_MODEL", "0") not in ("", "0"):
        raise ConfigError(
            "ORT_LOAD_CONFIG_FROM_MODEL is set, which lets a model file choose its own session options",
            hint="unset ORT_LOAD_CONFIG_FROM_MODEL",
        )
    levels = dict(
        zip(
            OPTIMIZATION_LEVELS,
            (
                ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            ),
            strict=True,
        )
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = levels[optimization]
    options.log_severity_level = 3  # errors only
    entries = dict(config or {})
    if isinstance(model, (str, Path)) and Path(model).suffix == ".ort":
        entries["session.load_model_format"] = "ORT"
    for key, value in entries.items():
        options.add_session_config_entry(key, value)
    for name, value in (fixed_dims or {}).items():
        options.add_free_dimension_override_by_name(name, int(value))
    if save_optimized_to is not None:
        options.optimized_model_filepath = str(save_optimized_to)
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(
        source, sess_options=options, providers=["CPUExecutionProvider"], disabled_optimizers=disabled_optimizers
    )


def fixed_dims_for(inputs: list[Any], feeds: dict[str, Any]) -> dict[str, int]:
    """Symbolic dimension name → its size in `feeds`, from a session's `get_inputs()` (or the manifest's records of
    them: dicts with "name" and "shape")."""
    dims: dict[str, int] = {}
    for arg in inputs:
        name, shape = (arg["name"], arg["shape"]) if isinstance(arg, dict) else (arg.name, arg.shape)
        if name not in feeds:
            continue
        for symbol, size in zip(shape, feeds[name].shape, strict=False):
            if isinstance(symbol, str) and symbol:
                dims.setdefault(symbol, int(size))
    return dims
