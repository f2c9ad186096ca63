"""ONNX → ONNX Runtime's ORT format (FlatBuffers), the format of ORT's mobile and reduced-size builds.

This does what `python -m onnxruntime.tools.convert_onnx_models_to_ort --optimization_style Fixed
--target_platform arm` does for one file: graph optimisations at the "all" level except the x86-only NCHWc
layout, saved in ORT format, so the file runs on ARM phones as well as here.
"""

import logging
from pathlib import Path

from refine_control.errors import ExportError
from refine_control.runtime.session import ort_session

logger = logging.getLogger(__name__)


def convert_to_ort(onnx_path: Path, ort_path: Path) -> None:
    """Write `ort_path` (ORT format) from `onnx_path`; `ExportError` on failure."""
    # QDQ nodes may stay int8 for ARM kernels (the converter's `--target_platform arm` setting).
    config = {"session.save_model_format": "ORT", "session.qdqisint8allowed": "1"}
    try:
        ort_session(onnx_path, config=config, save_optimized_to=ort_path, disabled_optimizers=["NchwcTransformer"])
    except Exception as err:  # onnxruntime's own exception types
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ExportError(f"converting {onnx_path.name} to ORT format failed: {first_line[:300]}") from err
    if not ort_path.is_file():
        raise ExportError(f"converting {onnx_path.name} to ORT format wrote no file")
    logger.debug("%s → %s (%d bytes)", onnx_path.name, ort_path.name, ort_path.stat().st_size)
