"""`refine-export --web` refuses early (before exporting) with one `error:` line, a hint and exit code 2."""

import shutil
from pathlib import Path

import pytest

from refine_control.export import web as web_module
from refine_control.export.cli import main


def test_missing_node_modules_is_an_error_with_the_npm_hint(tmp_path: Path, monkeypatch, capsys) -> None:
    source = tmp_path / "web"
    shutil.copytree(web_module.WEB_SOURCE, source, ignore=shutil.ignore_patterns("node_modules"))
    monkeypatch.setattr(web_module, "WEB_SOURCE", source)
    code = main([str(tmp_path / "run"), "-o", str(tmp_path / "model"), "--web", "-q"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: web/node_modules is missing") and "Traceback" not in err
    assert "hint: npm ci --prefix web" in err
    assert not (tmp_path / "model").exists()


def test_existing_web_folder_needs_overwrite(tmp_path: Path, capsys) -> None:
    if not (web_module.WEB_SOURCE / "node_modules").is_dir():
        pytest.skip("needs web/node_modules: npm ci --prefix web")
    target = tmp_path / "site"
    target.mkdir()
    (target / "index.html").write_text("someone else's site")
    code = main([str(tmp_path / "run"), "-o", str(tmp_path / "model"), "--web", str(target), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "error: web folder" in err and "hint: pass --overwrite" in err
    code = main([str(tmp_path / "run"), "-o", str(tmp_path / "model"), "--web", str(target), "--overwrite", "-q"])
    assert code == 2 and "is not a web folder; refusing to replace it" in capsys.readouterr().err
    assert (target / "index.html").read_text() == "someone else's site"


def test_web_dir_defaults_beside_the_model_dir(tmp_path: Path) -> None:
    from refine_control.export.cli import ExportConfig, build_parser

    args = build_parser().parse_args([str(tmp_path / "run"), "-o", str(tmp_path / "m"), "--web"])
    assert ExportConfig.from_args(args).web == tmp_path / "m-web"
    args = build_parser().parse_args([str(tmp_path / "run"), "-o", str(tmp_path / "m")])
    assert ExportConfig.from_args(args).web is None


def test_module_command_refuses_a_missing_model_dir(tmp_path: Path, capsys) -> None:
    code = web_module.main([str(tmp_path / "nope"), "-o", str(tmp_path / "site")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "Traceback" not in err
    assert not (tmp_path / "site").exists()
