"""Expected failures. The CLIs turn these into one line on stderr and an exit code, never a traceback."""

import errno
import os
import re


class RefineError(Exception):
    """Base class for failures a user can fix; exit code 1 unless a subclass says otherwise."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class ConfigError(RefineError):
    """Bad arguments or bad input files (a usage error): exit code 2."""

    exit_code = 2


class CheckpointError(RefineError):
    """A checkpoint or output could not be written or read back (disk full, corrupted files): exit code 2."""

    exit_code = 2


class ExportError(RefineError):
    """The model could not be exported."""


class ParityError(ExportError):
    """The exported model does not reproduce the PyTorch model within the thresholds."""


# errno values that say the disk, not the path, is the problem.
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def write_error(path: object, err: BaseException) -> CheckpointError:
    """`cannot write PATH: reason` for an OS error met while writing an output, with a hint that fits the cause
    (a full disk, a read-only filesystem, a missing permission or a parent that is not a directory)."""
    number = getattr(err, "errno", None)
    reason = getattr(err, "strerror", None) or str(err)
    found = re.search(r"os error (\d+)", str(err))  # safetensors reports OS errors as text: "... (os error 28)"
    if number is None and found is not None:
        number = int(found.group(1))
        reason = os.strerror(number)
    if number in _DISK_FULL:
        hint = "free some disk space, or choose an output path on another disk"
    elif number == errno.EROFS:
        hint = "the filesystem is read-only: choose an output path on a writable one"
    elif number in (errno.ENOTDIR, errno.EEXIST):
        hint = "a part of the path is a file: choose an output path whose parents are directories"
    else:
        hint = "choose an output path in a directory you may write to"
    return CheckpointError(f"cannot write {path}: {reason}", hint=hint)
