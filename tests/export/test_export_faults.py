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

EXPORT_ARGS = ["--exporter", "torchscript", "--parity-samples", "1", "--steps", "1", "--threads", "1", "-q"]
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


def run_phases(run: Path, model: Path, phases: list, final: list[str], work: Path) -> list[dict]:
    """Kill an export at each phase, then export once more unharmed (fault_driver.py: one import, forked runs)."""
    work.mkdir()
    spec = {"run": str(run), "model": str(model), "args": EXPORT_ARGS}
    spec["phases"] = [[phase, extra] for phase, extra, _ in phases] + [[None, final]]
    (work / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(FAULT_ENV, None)
    command = [sys.executable, str(Path(__file__).with_name("fault_driver.py")), str(work / "spec.json")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((work / "results.json").read_text())


def check_killed(result: dict, parent: Path, temp_complete: bool | None) -> None:
    phase, before, after = result["phase"], result["before"], result["after"]
    assert result["signal"] == signal.SIGKILL, (phase, result["exit_code"], result["log"][-2000:])
    for name in before["entries"]:  # the killed run first removed what the previous one left, and said so
        if ".tmp-" in name:
            assert name not in after["entries"] and f"removed {parent / name}" in result["log"], (phase, name)
    temps = [name for name in after["entries"] if ".tmp-" in name]
    assert len(temps) == 1, (phase, after["entries"])
    old = before["dirs"]["model"]["manifest"]
    if temp_complete is None:  # killed after the swap: MODEL is the new dir, the old one waits for removal
        assert after["dirs"]["model"]["manifest"]["complete"] is True and after["dirs"]["model"]["manifest"] != old
        assert after["dirs"][temps[0]] == {"manifest": old}
        return
    assert after["dirs"]["model"] == {"manifest": old}, phase  # MODEL untouched, every file verified
    if temp_complete:
        assert after["dirs"][temps[0]]["manifest"]["complete"] is True, phase
    else:  # nothing that the runtime would load
        assert "has no manifest.json" in after["dirs"][temps[0]]["error"], (phase, after["dirs"][temps[0]])


def check_final(result: dict, parent: Path) -> dict:
    assert result["signal"] is None and result["exit_code"] == 0, result["log"][-2000:]
    for name in result["before"]["entries"]:
        if ".tmp-" in name:
            assert f"removed {parent / name}" in result["log"], name
    assert result["after"]["entries"] == ["model"]  # no temp dir, no lock file
    manifest = result["after"]["dirs"]["model"]["manifest"]
    assert manifest["complete"] is True and manifest["export"]["parity_passed"] is True
    return manifest


@pytest.fixture
def old_model(exported: dict, tmp_path: Path) -> Path:
    """A complete model dir at MODEL, the one each killed export would replace."""
    import shutil

    assert exported["code"] == 0, exported["stdout"]
    return Path(shutil.copytree(exported["model"], tmp_path / "models" / "model"))


def test_export_killed_at_each_phase_leaves_model_whole(old_model: Path, tiny_run_dir: Path, tmp_path: Path):
    results = run_phases(tiny_run_dir, old_model, EXPORT_PHASES, [], tmp_path / "driver")
    for result, (_, _, temp_complete) in zip(results[:-1], EXPORT_PHASES, strict=True):
        check_killed(result, old_model.parent, temp_complete)
    check_final(results[-1], old_model.parent)
    assert json.loads((old_model / "parity.json").read_text())["passed"] is True


@pytest.mark.slow
def test_export_with_variants_killed_at_each_phase(old_model: Path, tiny_run_dir: Path, tmp_path: Path):
    results = run_phases(tiny_run_dir, old_model, VARIANT_PHASES, VARIANT_ARGS, tmp_path / "driver")
    for result, (_, _, temp_complete) in zip(results[:-1], VARIANT_PHASES, strict=True):
        check_killed(result, old_model.parent, temp_complete)
    manifest = check_final(results[-1], old_model.parent)
    assert {"int8", "fp16"} <= set(manifest["graphs"]["denoiser"])


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
