"""`refine-export`: arguments, bad inputs (one-line errors, exit code 2) and atomicity of a failed export."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from refine_control.errors import ConfigError
from refine_control.export.cli import ExportConfig, build_parser, main


def _error_lines(capsys: pytest.CaptureFixture) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith(("error:", "hint:"))]


def test_help_imports_neither_torch_nor_onnx():
    code = "import sys; import refine_control.export.cli; print(' '.join(sorted(sys.modules)))"
    loaded = set(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    )
    assert not {"torch", "onnx", "onnxruntime", "diffusers"} & loaded
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0


def test_parser_and_config_fields_agree():
    dests = {a.dest for a in build_parser()._actions if a.dest not in ("help", "version", "verbose", "quiet")}
    assert dests == {f.name for f in dataclasses.fields(ExportConfig)}


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--calibration-samples", "0"),
        ("--steps", "0"),
        ("--guidance-scale", "nan"),
        ("--opset", "16"),
        ("--int8-op-types", "Conv,Softmax"),
        ("--threads", "0"),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture, flag: str, value: str):
    assert main([str(tmp_path / "run"), "--output-dir", str(tmp_path / "model"), flag, value]) == 2
    lines = _error_lines(capsys)
    assert len(lines) == 1 and flag in lines[0]


def test_config_parses_int8_op_types():
    args = build_parser().parse_args(["run", "-o", "model", "--int8-op-types", "Conv, MatMul"])
    assert ExportConfig.from_args(args).int8_op_types == ("Conv", "MatMul")
    assert ExportConfig.from_args(build_parser().parse_args(["run", "-o", "model"])).int8_op_types is None
    with pytest.raises(ConfigError, match="run dir itself"):
        ExportConfig(Path("same"), Path("same"))


def test_run_dir_without_student(tmp_path: Path, capsys: pytest.CaptureFixture):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"teacher": "builtin"}')
    assert main([str(run), "--output-dir", str(tmp_path / "model")]) == 2
    lines = _error_lines(capsys)
    assert lines[0].startswith(f"error: run dir {run} has no student (student/model_index.json is missing)")
    assert not (tmp_path / "model").exists()


def test_missing_run_dir(tmp_path: Path, capsys: pytest.CaptureFixture):
    assert main([str(tmp_path / "nothing"), "--output-dir", str(tmp_path / "model")]) == 2
    assert "does not exist" in _error_lines(capsys)[0]


def _fake_run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    (run / "student").mkdir(parents=True)
    (run / "student" / "model_index.json").write_text("{}")
    (run / "config.json").write_text('{"teacher": "builtin"}')
    return run


def test_existing_model_dir_needs_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture):
    model = tmp_path / "model"
    model.mkdir()
    (model / "manifest.json").write_text("{}")
    assert main([str(_fake_run(tmp_path)), "--output-dir", str(model)]) == 2
    lines = _error_lines(capsys)
    assert lines == [
        f"error: model dir {model} already exists",
        "hint: pass --overwrite to replace it (only on success)",
    ]
    assert (model / "manifest.json").read_text() == "{}"


def test_overwrite_never_replaces_a_dir_that_is_not_a_model_dir(tmp_path: Path, capsys: pytest.CaptureFixture):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    assert main([str(_fake_run(tmp_path)), "--output-dir", str(precious), "--overwrite"]) == 2
    assert "not a refine-export model dir" in _error_lines(capsys)[0]
    assert (precious / "notes.txt").read_text() == "keep me"


def test_failed_parity_keeps_the_previous_model_dir(
    exported: dict, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
):
    """An export that misses a threshold fails with the check named (exit 1) and leaves MODEL as it was."""
    import refine_control.export.parity as parity

    tiny_run_dir = exported["run"]  # the shared fixture's run: no second distillation on another xdist worker

    model = tmp_path / "model"
    model.mkdir()
    (model / "manifest.json").write_text('{"previous": true}')
    monkeypatch.setitem(parity.SPECS, "denoiser", dataclasses.replace(parity.SPECS["denoiser"], atol=-1.0))
    argv = [str(tiny_run_dir), "-o", str(model), "--overwrite", "--exporter", "torchscript", "--threads", "1"]
    code = main([*argv, "--parity-samples", "1", "--steps", "2", "-q"])
    assert code == 1
    lines = _error_lines(capsys)
    assert lines[0].startswith("error: parity check failed: denoiser fp32 max abs error = ")
    assert lines[1] == "hint: pass --allow-degraded to keep the export anyway"
    assert json.loads((model / "manifest.json").read_text()) == {"previous": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temp dir left behind

    # With --allow-degraded the same export is kept, and says so.
    assert main([*argv, "--parity-samples", "1", "--steps", "2", "--allow-degraded", "-q"]) == 0
    manifest = json.loads((model / "manifest.json").read_text())
    assert manifest["export"]["parity_passed"] is False
    assert json.loads((model / "parity.json").read_text())["passed"] is False
