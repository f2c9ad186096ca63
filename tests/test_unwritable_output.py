"""An output the user cannot write is a user error: one `error:` line naming the path, exit code 2, nothing
written, in every command that writes (the shared boundary `run_cli`, the early `check_output`, the atomic
writers).

Tests run as root here, where permission bits stop nothing; the unwritable paths are real ones: under a regular
file (ENOTDIR), in /sys (EPERM) and in /proc (ENOENT); a full disk is the OS file-size limit (RLIMIT_FSIZE: EFBIG
on the first write past it), as in tests/test_distill.py.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from tiny_models import write_image_folder

REPO = Path(__file__).resolve().parents[1]
KINDS = ("under-a-file", "sys", "proc")


@pytest.fixture(params=KINDS)
def unwritable(request, tmp_path) -> Path:
    """An output path nobody can create, root included; the test's tmp dir holds only `file` besides."""
    if request.param == "under-a-file":
        (tmp_path / "file").write_text("not a dir\n")
        return tmp_path / "file" / "out"
    root = Path("/" + request.param)
    if not root.is_dir():
        pytest.skip(f"no {root} here")
    return root / f"refine-unwritable-{os.getpid()}" / "out"


def assert_refused(code: int, err: str, path: Path) -> None:
    """Exit 2, exactly one `error:` line and it names `path` (or a path inside it), a hint, no traceback."""
    assert code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: cannot write {path}"), err
    assert "hint: " in err and "Traceback" not in err, err


def assert_nothing_written(path: Path, *inputs: str) -> None:
    """Neither `path` nor anything beside it (the test's own `inputs` aside)."""
    assert not os.path.lexists(path)
    if path.parent.name == "file":
        tmp = path.parent.parent
        assert sorted(p.name for p in tmp.iterdir() if p.name not in inputs) == ["file"]
        assert (tmp / "file").read_text() == "not a dir\n"
    else:  # /sys, /proc
        assert not os.path.lexists(path.parent)


def test_distill(tiny_pipeline_dir, tmp_path, unwritable, capsys):
    from refine_control.cli import main

    data = write_image_folder(tmp_path / "data", 4)
    argv = ["--teacher", str(tiny_pipeline_dir), "--labelled", str(data), "-o", str(unwritable), "-q"]
    code = main([*argv, "--student", "compact-small", "--max-steps", "1", "--stage2-steps", "0"])
    assert_refused(code, capsys.readouterr().err, unwritable)
    assert_nothing_written(unwritable, "data")


def test_eval(tiny_run_dir, unwritable, capsys):
    from refine_control.evaluation.cli import main

    for flag in ("--json", "--grid"):  # refused before any image is generated
        code = main([str(tiny_run_dir), flag, str(unwritable), "--num-samples", "64", "-q"])
        assert_refused(code, capsys.readouterr().err, unwritable)
        assert_nothing_written(unwritable)


def test_export(tiny_run_dir, unwritable, capsys):
    from refine_control.export.cli import main

    code = main([str(tiny_run_dir), "-o", str(unwritable), "--exporter", "torchscript", "-q"])
    assert_refused(code, capsys.readouterr().err, unwritable)
    assert_nothing_written(unwritable)


def test_teacher(unwritable, tmp_path, capsys):
    from refine_control.builtin.cli import main

    code = main(["--output-dir", str(unwritable), "-q"])  # refused before the first training step
    assert_refused(code, capsys.readouterr().err, unwritable)
    assert_nothing_written(unwritable)
    work = tmp_path / "work"
    code = main(["--output-dir", str(work / "teacher"), "--work-dir", str(unwritable), "-q"])
    assert_refused(code, capsys.readouterr().err, unwritable)
    assert_nothing_written(unwritable)
    assert not work.exists()


def test_weaklabel(unwritable, tmp_path, capsys):
    from refine_control.weaklabel.cli import main

    for flag in ("--json", "--results-dir"):
        code = main(["upllrs", "--quick", flag, str(unwritable)])
        assert_refused(code, capsys.readouterr().err, unwritable)
        assert_nothing_written(unwritable)


@pytest.mark.parametrize(
    ("name", "argv"),
    [  # a result file (refine_control/results.py), and a report refused before any work (no model, no server)
        ("data.py", ["--images", "4", "--source-size", "64", "--workers", "0", "--micro-batches", "1", "--no-train"]),
        ("shapes.py", ["no-model-needed"]),
        ("load.py", ["--url", "http://127.0.0.1:9"]),
    ],
)
def test_benchmarks(unwritable, name, argv):
    flag = "--results-dir" if name == "data.py" else "--json"
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / name), *argv, flag, str(unwritable)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert_refused(done.returncode, done.stderr, unwritable)
    assert_nothing_written(unwritable)


def test_serve_prints_error_and_hint(tmp_path, capsys):
    """refine-serve writes nothing, but its user mistakes read like every other command's."""
    from refine_control.serve.cli import main

    (tmp_path / "model").write_text("a file, not a model dir\n")
    assert main([str(tmp_path / "model")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len([x for x in err.splitlines() if x.startswith("error:")]) == 1, err
    assert main([str(tmp_path), "--host", "0.0.0.0"]) == 2  # no token
    err = capsys.readouterr().err
    assert err.startswith("error: refusing to listen on 0.0.0.0") and "\nhint: " in err, err


def _with_file_size_limit(module: str, argv: list[str], limit: int, cwd: Path) -> subprocess.CompletedProcess:
    """`module.main(argv)` in a process whose files cannot grow past `limit` bytes (EFBIG past it, as a disk
    that fills up mid-write)."""
    script = textwrap.dedent(f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
        from {module} import main
        sys.exit(main({argv!r}))
    """)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, cwd=cwd)


def test_export_on_a_full_disk_leaves_nothing_half_written(tiny_run_dir, tmp_path):
    """The graphs outgrow the limit mid-export: one error naming MODEL, and neither MODEL nor a temp dir beside
    it afterwards."""
    out = tmp_path / "out"
    out.mkdir()
    argv = [str(tiny_run_dir), "-o", str(out / "model"), "--exporter", "torchscript", "--parity-samples", "1"]
    done = _with_file_size_limit("refine_control.export.cli", [*argv, "--steps", "2", "-q"], 64_000, tmp_path)
    assert_refused(done.returncode, done.stderr, out / "model")
    assert "File too large" in done.stderr and "hint: free some disk space" in done.stderr
    assert list(out.iterdir()) == []
