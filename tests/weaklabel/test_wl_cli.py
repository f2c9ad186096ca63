import dataclasses
import json
import shlex
import subprocess
import sys

import pytest

from refine_control.results import read_results
from refine_control.weaklabel.cli import COMMANDS, WeakLabelConfig, build_parser, main


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)
    assert main(["transfer", "--help"]) == 0
    assert "--results-dir" in capsys.readouterr().out


def test_parser_dests_match_the_config_fields():
    for name in COMMANDS:
        args = build_parser().parse_args([name])
        assert set(vars(args)) - {"quiet"} == {f.name for f in dataclasses.fields(WeakLabelConfig)}  # -q: verbose -1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["upllrs", "--dataset", "cifar10"], "invalid choice"),
        (["softlabel", "--num-seeds", "0"], "--num-seeds"),
        (["frobnicate"], "invalid choice"),
        (["transfer", "--seed", "x"], "invalid int"),
        (["transfer", "--quick", "--only", "strength"], "KEY=VALUE"),
        (["transfer", "--dataset", "synthetic", "--quick", "--only", "colour=red"], "colour unknown here"),
        (["transfer", "--dataset", "synthetic", "--quick", "--only", "seed=7"], "no job matches"),
        (["transfer", "--dataset", "synthetic", "--max-samples", "100"], "does not apply to `transfer`"),
    ],
)
def test_bad_input_is_an_error_line_on_stderr_and_exit_code_2(argv, message, capsys):
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert lines[0].startswith("error:") and message in lines[0] and all(x.startswith("hint:") for x in lines[1:])
    assert captured.out == ""


def test_missing_dataset_gives_the_install_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("REFINE_FASHION_MNIST_DIR", str(tmp_path))
    assert main(["softlabel", "--dataset", "fashion-mnist", "--quick"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Fashion-MNIST not found") and "apt-get install dataset-fashion-mnist" in err


def test_quick_run_writes_result_files_whose_command_reproduces_them(tmp_path, capsys):
    out = tmp_path / "results" / "weaklabel"
    argv = ["transfer", "--dataset", "synthetic", "--quick", "-q", "--results-dir", str(out)]
    assert main([*argv, "--json", str(tmp_path / "t.json")]) == 0
    assert "gain of α=1 over scratch" in capsys.readouterr().out
    runs = read_results("weaklabel/transfer", tmp_path / "results")
    assert [r["name"] for r in runs] == ["synthetic_u0_n1-50_s0", "synthetic_u2_n1-50_s0"]
    first = runs[0]
    assert first["command"] == shlex.join(["refine-weaklabel", *argv, "--json", str(tmp_path / "t.json")])
    assert first["seed"] == 0 and first["config"]["strength"] == 0.0 and first["config"]["quick"] is True
    assert set(first["metrics"]["test_acc"]) == {"10", "20"} and first["wall_s"] > 0
    before = {r["name"]: r["metrics"] for r in runs}
    assert main(shlex.split(first["command"])[1:]) == 0  # the recorded command reproduces the files
    after = {r["name"]: r["metrics"] for r in read_results("weaklabel/transfer", tmp_path / "results")}
    assert after == before
    data = json.loads((tmp_path / "t.json").read_text())
    assert data["config"]["command"] == "transfer" and len(data["runs"]) == 2


def test_only_selects_jobs(tmp_path):
    out = tmp_path / "res"
    argv = ["transfer", "--dataset", "synthetic", "--quick", "-q", "--results-dir", str(out), "--only", "strength=2"]
    assert main(argv) == 0
    assert sorted(p.name for p in (out / "transfer").iterdir()) == ["synthetic_u2_n1-50_s0.json"]


def test_quick_upllrs_run_on_synthetic(capsys):
    assert main(["upllrs", "--dataset", "synthetic", "--quick", "--seed", "1", "-q"]) == 0
    out = capsys.readouterr().out
    assert "upllrs γ=0.05" in out and "recursive separation" in out and "removed_fraction" in out


def test_importing_the_subpackage_pulls_in_no_diffusers_and_no_sklearn():
    code = (
        "import sys, pkgutil, importlib, refine_control.weaklabel as w\n"
        "for m in pkgutil.iter_modules(w.__path__): importlib.import_module(f'refine_control.weaklabel.{m.name}')\n"
        "bad = [n for n in ('diffusers', 'transformers', 'sklearn') if n in sys.modules]\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
