"""Test helper: run `refine-export` once per phase, each run killed (SIGKILL) at that phase; report what is on disk.

    python fault_driver.py SPEC.json      # {"run", "model", "args", "phases": [[phase or null, [flags]], ...]}

The heavy imports (torch, diffusers, onnx) happen once here; every export runs in a child forked from this
single-threaded process, so each run costs its own work only. A child is a real process killed by the real
signal at its fault point (`REFINE_CONTROL_FAULT_AT`), with no cleanup. After each run the driver records the
child's exit status and log, and a snapshot of MODEL's parent dir: MODEL and every temp dir, each as loaded and
verified by the runtime (`ModelDir`) or the error it gave. The test asserts on the JSON written to SPEC's dir.
"""

import json
import os
import sys
import traceback
from pathlib import Path

from refine_control.faults import FAULT_ENV


def loaded(path: Path) -> dict:
    """{"manifest": ...} if the runtime loads `path` and every listed file verifies, else {"error": ...}."""
    from refine_control.runtime import ModelDir, ModelDirError

    try:
        model = ModelDir(path)
        for name in model.files:
            model.verify(name)
    except ModelDirError as err:
        return {"error": str(err)}
    return {"manifest": model.manifest}


def snapshot(model: Path) -> dict:
    entries = sorted(p.name for p in model.parent.iterdir())
    dirs = {name: loaded(model.parent / name) for name in entries if (model.parent / name).is_dir()}
    return {"entries": entries, "dirs": dirs}


def run_killed(run: str, model: Path, args: list[str], phase: str | None, log: Path) -> int:
    """Fork, export in the child (killed at `phase`), return the child's wait status."""
    from refine_control.export.cli import main as export

    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 1
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            if phase is None:
                os.environ.pop(FAULT_ENV, None)
            else:
                os.environ[FAULT_ENV] = phase
            code = export([run, "--output-dir", str(model), "--overwrite", *args])
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return status


def main() -> int:
    spec_path = Path(sys.argv[1])
    spec = json.loads(spec_path.read_text())
    import refine_control.export.exporter  # noqa: F401  (the heavy imports, once, before any fork)

    model = Path(spec["model"])
    results = []
    for i, (phase, extra) in enumerate(spec["phases"]):
        before = snapshot(model)
        log = spec_path.parent / f"run-{i}.log"
        status = run_killed(spec["run"], model, [*spec["args"], *extra], phase, log)
        results.append(
            {
                "phase": phase,
                "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                "exit_code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
                "log": log.read_text(errors="replace"),
                "before": before,
                "after": snapshot(model),
            }
        )
    (spec_path.parent / "results.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
