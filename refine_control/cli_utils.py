"""The one error boundary every console script shares."""

import logging
import os
import sys
from collections.abc import Callable

from refine_control.errors import RefineError

logger = logging.getLogger("refine_control")

# What `pip install refine-control` leaves out: the device install runs exported models only (refine_control/runtime); the
# `[train]` extra brings what distilling, evaluating and exporting need.
TRAIN_MODULES = frozenset(
    {
        "torch",
        "diffusers",
        "transformers",
        "accelerate",
        "datasets",
        "pyarrow",
        "safetensors",
        "skimage",
        "torchmetrics",
        "onnx",
        "onnxscript",
    }
)
TRAIN_INSTALL = "pip install 'refine-control[train]'"


def setup_logging(verbosity: int = 0) -> None:
    level = logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
    # Libraries we build on are chatty at INFO; keep their warnings only.
    for name in ("diffusers", "transformers", "accelerate", "httpx", "PIL"):
        logging.getLogger(name).setLevel(logging.WARNING if verbosity <= 0 else logging.INFO)
    if verbosity <= 0:
        # Read by transformers/diffusers/huggingface_hub when they are imported: no advisory warnings (e.g. about
        # torchvision) and no per-file loading bars; our own progress bars stay.
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def offline_env() -> None:
    """Never reach a model hub: every model is loaded from a local directory or the local cache."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("DISABLE_TELEMETRY", "1")


def run_cli(body: Callable[[], int]) -> int:
    """Run a command body; a `RefineError` becomes `error: ...` (and `hint: ...`) with its exit code."""
    try:
        return body()
    except RefineError as err:
        print(f"error: {err}", file=sys.stderr)  # noqa: T201 - the CLI boundary talks to the user
        if err.hint:
            print(f"hint: {err.hint}", file=sys.stderr)  # noqa: T201
        return err.exit_code
    except ModuleNotFoundError as err:
        if (err.name or "").split(".")[0] not in TRAIN_MODULES:
            raise
        print(f"error: this command needs the training dependencies ({err.name} is not installed)", file=sys.stderr)  # noqa: T201
        print(f"hint: {TRAIN_INSTALL} (the device install runs exported models only)", file=sys.stderr)  # noqa: T201
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)  # noqa: T201
        return 130
