"""The one error boundary every console script shares."""

import errno
import logging
import os
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path

from refine_control.errors import ConfigError, RefineError, write_error

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


def check_output(*paths: str | os.PathLike[str] | None) -> None:
    """Fail before any work when a command could not write one of `paths` (the files or dirs it writes; None:
    not asked for).

    Checks by doing what the command will do first, undone at once: make the outermost missing dir of the path
    (or, for a path that exists, a temp dir beside it, as the atomic writers do), since permission bits say
    nothing to root and nothing about read-only mounts, /proc or /sys. A full disk shows only when the data is
    written; the atomic writers (refine_control/atomic.py) report it then, leaving nothing half-written."""
    for path in paths:
        if path is None:
            continue
        target = Path(path).absolute()
        try:
            if os.path.lexists(target):
                os.rmdir(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.probe-"))
                continue
            first = target
            while not os.path.lexists(first.parent) and first.parent != first.parent.parent:
                first = first.parent
            os.mkdir(first)
            os.rmdir(first)
        except FileExistsError:
            continue  # made by someone else meanwhile: it can be made
        except OSError as err:
            raise write_error(path, err) from None


# Functions whose OSError means a write failed (pathlib/os/tempfile/shutil and this package's writers).
_WRITING = frozenset(
    {"mkdir", "makedirs", "mkstemp", "mkdtemp", "_mkstemp_inner", "touch", "rename", "replace", "copyfile", "copy2"}
    | {"copytree", "move", "symlink_to", "hardlink_to", "atomic_dir", "save_file", "save_pretrained", "savefig"}
)
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_WRITE_ONLY = _DISK_FULL | {errno.EROFS}


def os_error(err: OSError) -> RefineError | None:
    """The user-facing error for an OS error about a path (None: not about a path, a bug to show as such).

    An output that cannot be created or written (no permission, read-only filesystem, a file where a dir should
    be, a full disk) is a user's mistake like a bad flag: one `error:` line naming the path, exit code 2."""
    path = err.filename
    if path is None:
        if err.errno in _DISK_FULL:  # a write() on an open file: the path is not in the error
            return write_error("the output", err)
        return None
    frames = [frame.f_code.co_name for frame, _ in traceback.walk_tb(err.__traceback__)][-3:]
    writing = err.errno in _WRITE_ONLY or any(
        name in _WRITING or name.lstrip("_").startswith(("write", "save")) for name in frames
    )
    if writing:
        return write_error(os.fsdecode(path), err)
    return ConfigError(
        f"cannot open {os.fsdecode(path)}: {err.strerror or err}",
        hint="check that the path exists and that you may read it",
    )


def run_cli(body: Callable[[], int]) -> int:
    """Run a command body; a `RefineError`, or an OS error about a path, becomes `error: ...` (and `hint: ...`)
    with its exit code."""
    try:
        return body()
    except RefineError as err:
        return _report(err)
    except OSError as err:
        known = os_error(err)
        if known is None:
            raise
        return _report(known)
    except ModuleNotFoundError as err:
        if (err.name or "").split(".")[0] not in TRAIN_MODULES:
            raise
        print(f"error: this command needs the training dependencies ({err.name} is not installed)", file=sys.stderr)  # noqa: T201
        print(f"hint: {TRAIN_INSTALL} (the device install runs exported models only)", file=sys.stderr)  # noqa: T201
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)  # noqa: T201
        return 130


def _report(err: RefineError) -> int:
    print(f"error: {err}", file=sys.stderr)  # noqa: T201 - the CLI boundary talks to the user
    if err.hint:
        print(f"hint: {err.hint}", file=sys.stderr)  # noqa: T201
    return err.exit_code
