"""Atomic file and directory writes: a reader sees the old file or the new one, never half of one (and never
nothing, where there was something)."""

import contextlib
import ctypes
import errno
import fcntl
import functools
import glob
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from refine_control.errors import CheckpointError, write_error
from refine_control.faults import fault_point

logger = logging.getLogger(__name__)

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2

# safetensors reports I/O failures (disk full, file too large) as SafetensorError, not OSError. The device install
# has no safetensors (and writes none): there OSError is all.
try:
    from safetensors import SafetensorError

    WRITE_ERRORS: tuple[type[Exception], ...] = (OSError, SafetensorError)
except ModuleNotFoundError:
    WRITE_ERRORS = (OSError,)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to a temp file beside `path`, fsync it, then rename it over `path`."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise write_error(path, err) from err


def write_text(path: str | os.PathLike[str], text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temp dir beside `path`; on success it takes the place of `path` in one step.

    - Replacing an existing `path` swaps the two dirs with one `renameat2(RENAME_EXCHANGE)` (Linux ≥ 3.15), so
      at every instant `path` is the complete old dir or the complete new one, even if the process is killed.
      Where the call is missing (other systems, some filesystems) it falls back to two renames and the next run
      puts a dir left aside back in place (logged).
    - A lock file `.NAME.lock` (flock) keeps a second writer of the same `path` out with a clear error.
    - Under that lock, every temp dir of `path` is a leftover of a killed run: they are removed first (logged).
    - On any failure the temp dir is removed and an existing `path` is left as it was.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise write_error(path, err) from err
    with _writer_lock(path):
        clean_stale(path)
        try:
            tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-{os.getpid()}-"))
        except OSError as err:
            raise write_error(path, err) from err
        try:
            yield tmp
            fault_point("atomic_dir.before_swap")
            if os.path.lexists(path):
                if _exchange(tmp, path):
                    _fsync_dir(path.parent)
                    fault_point("atomic_dir.after_swap")  # `tmp` now holds the old dir
                    shutil.rmtree(tmp, ignore_errors=True)
                else:
                    _replace_in_two_renames(tmp, path)
            else:
                os.rename(tmp, path)
                _fsync_dir(path.parent)
        except WRITE_ERRORS as err:
            shutil.rmtree(tmp, ignore_errors=True)
            raise write_error(path, err) from err
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def clean_stale(path: Path) -> list[Path]:
    """Remove the temp dirs a killed writer of `path` left beside it; restore `path` from a dir set aside by
    the two-rename fallback if `path` itself is missing. Call with the writer lock held."""
    removed = []
    aside = sorted(path.parent.glob(f".{glob.escape(path.name)}.old-*"))
    if aside and not os.path.lexists(path):
        os.rename(aside[-1], path)
        logger.warning("restored %s from %s (left aside by an interrupted replace)", path, aside[-1].name)
        aside = aside[:-1]
    stale = [*path.parent.glob(f".{glob.escape(path.name)}.tmp-*"), *aside]
    stale += list(path.parent.glob(f".{glob.escape(path.name)}.*.tmp"))  # the naming before this version
    for leftover in sorted(set(stale)):
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
            removed.append(leftover)
            logger.warning("removed %s, left by an interrupted run", leftover)
    return removed


@contextlib.contextmanager
def _writer_lock(path: Path) -> Iterator[None]:
    """An exclusive flock on `.NAME.lock` beside `path`, removed when done (re-opened if another process
    removed it while this one waited)."""
    lock_path = path.with_name(f".{path.name}.lock")
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:  # the first write into the output's parent dir: name the output, not the lock
            raise write_error(path, err) from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise CheckpointError(
                f"{path} is being written by another process", hint="wait for it to finish, or write elsewhere"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # we locked a lock file the previous holder had just removed: take the new one
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock_path)
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically with renameat2(RENAME_EXCHANGE); False where that is not available."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):  # no such call, or not on this filesystem
        return False
    raise OSError(err, os.strerror(err), str(b))


@functools.lru_cache(maxsize=1)
def _renameat2() -> Any:
    if sys.platform != "linux":
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        func = libc.renameat2  # glibc ≥ 2.28, musl ≥ 1.1.24
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


def _replace_in_two_renames(tmp: Path, path: Path) -> None:
    """The fallback: `path` is missing between the two renames; `clean_stale` repairs that on the next run."""
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    os.rename(path, old)
    fault_point("atomic_dir.between_renames")
    try:
        os.rename(tmp, path)
    except OSError:
        os.rename(old, path)
        raise
    _fsync_dir(path.parent)
    shutil.rmtree(old, ignore_errors=True)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
