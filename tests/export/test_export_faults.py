"""Model dirs are all-or-nothing: `refine-export` and `atomic_dir` killed (SIGKILL) at every named phase.

`REFINE_CONTROL_FAULT_AT=<phase>` makes the process kill itself at that `fault_point` (refine_control/faults.py),
so each phase is hit exactly, not by timing luck. After every kill: MODEL is the complete old dir (same manifest,
every file verified) or, once the swap happened, the complete new one; never missing; the temp dir left behind
cannot be loaded before its manifest is written; the next run removes what the killed one left (logged).
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from refine_control.faults import FAULT_ENV
from refine_control.serve.runtime import ModelDir, ModelDirError

EXPORT_ARGS = ["--exporter", "torchscript", "--parity-samples", "1", "--steps", "2", "--threads", "1", "-q"]
VARIANT_ARGS = ["--int8", "--int8-op-types", "MatMul", "--calibration-samples", "1", "--fp16", "--ort"]
# (phase, extra export flags, whether the temp dir holds the final manifest by then)
EXPORT_PHASES = [
    ("export.graphs", [], False),
    ("export.parity", [], False),
    ("export.manifest", [], True),
    ("atomic_dir.after_swap", [], None),  # swapped: MODEL is new, the temp path holds the old dir
]  # atomic_dir.before_swap leaves what export.manifest leaves; it is killed in test_atomic_dir_killed_while_replacing
VARIANT_PHASES = [("export.int8", VARIANT_ARGS, False), ("export.fp16", VARIANT_ARGS, False)]
VARIANT_PHASES += [("export.ort", VARIANT_ARGS, False)]


def export(run: Path, model: Path, phase: str | None, extra: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(FAULT_ENV, None)
    if phase is not None:
        env[FAULT_ENV] = phase
    code = "import sys; from refine_control.export.cli import main; sys.exit(main())"
    command = [sys.executable, "-c", code, str(run), "--output-dir", str(model), "--overwrite", *EXPORT_ARGS, *extra]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)


def leftovers(parent: Path) -> list[Path]:
    return sorted(p for p in parent.iterdir() if p.name.startswith("."))


def verified(model: Path) -> dict:
    """Load `model` as the runtime does and check every listed file against the manifest; its manifest."""
    md = ModelDir(model)
    for name in md.files:
        md.verify(name)
    return md.manifest


def kill_and_check(run: Path, model: Path, phase: str, extra: list[str], temp_complete: bool | None) -> None:
    before = verified(model)
    stale = [p for p in leftovers(model.parent) if ".tmp-" in p.name]  # (the lock file is reused, not stale)
    done = export(run, model, phase, extra)
    assert done.returncode == -signal.SIGKILL, (phase, done.returncode, done.stderr[-2000:])
    for path in stale:  # the killed run cleaned up what the previous one left, and said so
        assert not path.exists() and f"removed {path}" in done.stderr, (phase, path)
    temps = [p for p in leftovers(model.parent) if ".tmp-" in p.name]
    assert len(temps) == 1, (phase, leftovers(model.parent))
    if temp_complete is None:  # killed after the swap: MODEL is the new dir, the old one waits for removal
        assert verified(model)["created"] >= before["created"] and verified(temps[0]) == before
        return
    assert verified(model) == before, phase  # MODEL untouched
    if temp_complete:
        assert verified(temps[0])["complete"] is True
    else:
        assert not (temps[0] / "manifest.json").exists()
        with pytest.raises(ModelDirError, match=r"no manifest\.json"):
            ModelDir(temps[0])


@pytest.fixture
def old_model(exported: dict, tmp_path: Path) -> Path:
    """A complete model dir at MODEL, the one each killed export would replace."""
    import shutil

    assert exported["code"] == 0, exported["stdout"]
    return Path(shutil.copytree(exported["model"], tmp_path / "models" / "model"))


def test_export_killed_at_each_phase_leaves_model_whole(old_model: Path, tiny_run_dir: Path):
    for phase, extra, temp_complete in EXPORT_PHASES:
        kill_and_check(tiny_run_dir, old_model, phase, extra, temp_complete)
    stale = leftovers(old_model.parent)
    done = export(tiny_run_dir, old_model, None, [])
    assert done.returncode == 0, done.stderr[-2000:]
    assert all(f"removed {p}" in done.stderr for p in stale if ".tmp-" in p.name)
    assert leftovers(old_model.parent) == []  # no temp dir, no lock file
    manifest = verified(old_model)
    assert manifest["complete"] is True and manifest["export"]["parity_passed"] is True
    assert json.loads((old_model / "parity.json").read_text())["passed"] is True


@pytest.mark.slow
def test_export_with_variants_killed_at_each_phase(old_model: Path, tiny_run_dir: Path):
    for phase, extra, temp_complete in VARIANT_PHASES:
        kill_and_check(tiny_run_dir, old_model, phase, extra, temp_complete)
    assert export(tiny_run_dir, old_model, None, VARIANT_ARGS).returncode == 0
    assert leftovers(old_model.parent) == [] and {"int8", "fp16"} <= set(ModelDir(old_model).precisions())


ATOMIC_SCRIPT = """
import sys
from pathlib import Path
import refine_control.atomic as atomic
if sys.argv[2] == "two-renames":
    atomic._exchange = lambda a, b: False  # as where renameat2 is missing
with atomic.atomic_dir(Path(sys.argv[1])) as tmp:
    (tmp / "version").write_text(sys.argv[3])
    (tmp / "payload").write_bytes(b"x" * 100_000)
"""


def write_version(target: Path, version: str, phase: str | None = None, mode: str = "exchange"):
    env = {k: v for k, v in os.environ.items() if k != FAULT_ENV}
    if phase is not None:
        env[FAULT_ENV] = phase
    command = [sys.executable, "-c", ATOMIC_SCRIPT, str(target), mode, version]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize(
    ("mode", "phase", "after_kill"),
    [
        ("exchange", "atomic_dir.before_swap", "v1"),
        ("exchange", "atomic_dir.after_swap", "v2"),
        ("two-renames", "atomic_dir.before_swap", "v1"),
        ("two-renames", "atomic_dir.between_renames", None),  # the fallback's window: repaired by the next run
    ],
)
def test_atomic_dir_killed_while_replacing(tmp_path: Path, mode: str, phase: str, after_kill: str | None):
    target = tmp_path / "out" / "model"
    assert write_version(target, "v1").returncode == 0
    killed = write_version(target, "v2", phase, mode)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    if after_kill is None:
        assert not target.exists() and any(".old-" in p.name for p in target.parent.iterdir())
    else:
        assert (target / "version").read_text() == after_kill and (target / "payload").stat().st_size == 100_000
    # the next writer restores a dir set aside and removes every leftover, naming each
    again = write_version(target, "v3", None, mode)
    assert again.returncode == 0, again.stderr
    if after_kill is None:
        assert "restored" in again.stderr
    assert (target / "version").read_text() == "v3"
    assert sorted(p.name for p in target.parent.iterdir()) == ["model"]


def test_a_second_writer_is_refused_and_old_temp_names_are_cleaned(tmp_path: Path):
    import fcntl

    from refine_control.atomic import atomic_dir
    from refine_control.errors import CheckpointError

    target = tmp_path / "model"
    legacy = tmp_path / ".model.k2j3h4.tmp"  # a killed run of an earlier version (no pid in the name)
    (legacy / "sub").mkdir(parents=True)
    unrelated = tmp_path / ".other.tmp-1-x"
    unrelated.mkdir()
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
        lock = os.open(tmp_path / ".model.lock", os.O_RDWR)
        with pytest.raises(BlockingIOError):
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held by the writer
        os.close(lock)
        with pytest.raises(CheckpointError, match="being written by another process"), atomic_dir(target):
            pass
    assert not legacy.exists() and unrelated.exists()  # only what a writer of `model` leaves is removed
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.tmp-1-x", "model"]
