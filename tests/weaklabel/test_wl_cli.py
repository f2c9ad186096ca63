import dataclasses
import json
import subprocess
import sys

import pytest

from refine_control.weaklabel.cli import COMMANDS, WeakLabelConfig, build_parser, main


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)
    assert main(["transfer", "--help"]) == 0
    assert "--dataset" in capsys.readouterr().out


def test_parser_dests_match_the_config_fields():
    for name in COMMANDS:
        args = build_parser().parse_args([name])
        assert set(vars(args)) == {f.name for f in dataclasses.fields(WeakLabelConfig)}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["upllrs", "--dataset", "cifar10"], "invalid choice"),
        (["softlabel", "--num-seeds", "0"], "--num-seeds"),
        (["frobnicate"], "invalid choice"),
        (["transfer", "--seed", "x"], "invalid int"),
    ],
)
def test_bad_input_is_one_line_on_stderr_and_exit_code_2(argv, message, capsys):
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]
    assert captured.out == ""


def test_missing_dataset_gives_the_install_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("REFINE_FASHION_MNIST_DIR", str(tmp_path))
    assert main(["softlabel", "--dataset", "fashion-mnist", "--quick"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Fashion-MNIST not found") and "apt-get install dataset-fashion-mnist" in err


def test_quick_run_prints_a_table_and_writes_json(tmp_path, capsys):
    path = tmp_path / "out" / "transfer.json"
    assert main(["transfer", "--dataset", "synthetic", "--quick", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "| dataset" in out and "gain α=1.0" in out
    data = json.loads(path.read_text())
    assert data["config"]["command"] == "transfer" and len(data["records"]) == 4
    assert data["tables"][0]["columns"][0] == "dataset"


def test_quick_upllrs_run_on_synthetic(capsys):
    assert main(["upllrs", "--dataset", "synthetic", "--quick", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "upllrs_no_ssl" in out and "recursive separation" in out


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
