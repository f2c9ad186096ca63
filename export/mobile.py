"""Mobile readiness of the exported graphs, recorded in the manifest.

- `mobile_usability`: ONNX Runtime's mobile usability checker (the code behind
  `python -m onnxruntime.tools.check_onnx_model_mobile_usability`) on one graph: whether NNAPI (Android) and CoreML
  (iOS) could take the graph as it is or with fixed input shapes, or whether the CPU provider is the choice. Its
  verdicts come as log lines; they are kept verbatim, with the per-provider result parsed from them.
- `write_required_operators`: the operator list a minimal ONNX Runtime build needs for the `.ort` files
  (`--include_ops_by_config required_operators.config` of ORT's build script), as ORT's converter writes it.

Both write only inside `work_dir` (the export's temp dir): the checker's own optimisation step, which would use the
system temp dir, is done here with the project's session factory instead (tests/serve/test_serve_egress.py traces
every file an export writes).
"""

import logging
import re
from pathlib import Path
from typing import Any

from refine_control.runtime.session import ort_session

REQUIRED_OPERATORS = "required_operators.config"
_VERDICT = re.compile(r"Model should perform well with (.+?) (as is|if modified to have fixed input shapes): (\w+)")


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def mobile_usability(onnx_path: Path, work_dir: Path) -> dict[str, Any]:
    """The checker's verdict for one graph: per execution provider, "YES" / "MAYBE" / "NO" as is and with fixed
    shapes, and whether any mobile provider is worth trying over the CPU provider."""
    from onnxruntime.tools.mobile_helpers import usability_checker

    optimized = work_dir / f".mobile-{onnx_path.stem}.onnx"
    ort_session(onnx_path, threads=1, optimization="basic", save_optimized_to=optimized)  # what the checker does
    logger = logging.getLogger("refine_control.export.mobile.checker")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = _Collect()
    logger.addHandler(handler)
    try:
        # `checker` is what `analyze_model` runs after optimising; called directly, since `analyze_model` always
        # makes a directory in the system temp dir, outside the export's declared paths.
        try_mobile_eps = bool(usability_checker.checker(optimized.resolve(), logger))
    except Exception as err:  # the checker's own failures must not fail the export: record them
        return {
            "checked": False,
            "error": f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}",
        }
    finally:
        logger.removeHandler(handler)
        optimized.unlink(missing_ok=True)
    providers: dict[str, dict[str, str]] = {}
    for line in handler.lines:
        match = _VERDICT.search(line)
        if match:
            key = "as_is" if match.group(2) == "as is" else "fixed_shapes"
            providers.setdefault(match.group(1), {})[key] = match.group(3)
    return {
        "checked": True,
        "checker": "onnxruntime.tools.check_onnx_model_mobile_usability",
        "try_nnapi_or_coreml": try_mobile_eps,
        "providers": providers,
        "advice": "compare NNAPI / CoreML against the CPU provider on the device"
        if try_mobile_eps
        else "use the CPU provider",
    }


def write_required_operators(ort_files: list[Path], out: Path) -> None:
    """The reduced-build operator config for `ort_files` (ORT's own writer), with bare file names in its header."""
    from onnxruntime.tools.ort_format_model.utils import create_config_from_models

    logging.disable(logging.INFO)  # the writer logs "Created config in <path>" through its own handler
    try:
        create_config_from_models(sorted(ort_files), out, enable_type_reduction=False)
    finally:
        logging.disable(logging.NOTSET)
    text = out.read_text()
    for path in ort_files:
        text = text.replace(str(path), path.name)
    out.write_text(text)
