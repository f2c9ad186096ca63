"""Cross-origin isolation headers on every page and static file, and the on-device mode's switch (`--web`): off by
default and without the browser runtime's npm packages (a note, never a crash), refused with exit code 2 for a
folder it would have to replace. The mode itself, with a real model and Chromium: tests/web/test_web_serve.py."""

import json
from pathlib import Path

import pytest
from serve_client import make_client
from serve_fakes import FakeEngine

import refine_control.export.web as web_export
from refine_control.errors import ConfigError
from refine_control.serve import device
from refine_control.serve.cli import build_parser, settings_from_args

ISOLATION = {
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-embedder-policy": "require-corp",
    "cross-origin-resource-policy": "same-origin",
}


def test_isolation_headers_on_pages_and_static_files(fake_client):
    for path in ("/", "/docs", "/static/app.js", "/static/style.css", "/openapi.json", "/healthz", "/v1/models"):
        for response in (fake_client.get(path), fake_client.head(path)):
            assert response.status_code == 200, path
            for name, value in ISOLATION.items():
                assert response.headers.get(name) == value, (path, name)
    refused = fake_client.get("/", headers={"Host": "evil.example"})  # errors from the guard carry them too
    assert refused.status_code == 400 and refused.headers["cross-origin-embedder-policy"] == "require-corp"


def test_mode_off_by_default(fake_client):
    info = fake_client.get("/v1/models").json()["device"]
    assert info == {"available": False, "url": None, "note": device.NOT_ENABLED}
    for path in ("/device", "/device/", "/device/index.html"):
        response = fake_client.get(path)
        assert response.status_code == 404, path
        assert response.json() == {"error": "not_found", "detail": f"the on-device mode is {device.NOT_ENABLED}"}
    page = fake_client.get("/").text
    assert 'id="device-link" href="/device/"' in page and 'id="device-off"' in page


def fake_model(path: Path, manifest: dict) -> Path:
    path.mkdir(parents=True)
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


def test_without_the_npm_packages_the_mode_is_off_with_a_note(tmp_path, monkeypatch, caplog):
    """The device install has no web/ (and a checkout may lack web/node_modules): the server still starts."""
    source = tmp_path / "web"  # a checkout's web/ before `npm ci --prefix web`
    source.mkdir()
    (source / "index.html").write_text("<!doctype html>")
    model = fake_model(tmp_path / "model", {"complete": True})
    for missing in (source, tmp_path / "no-such-web"):  # no node_modules; no web/ at all (a wheel install)
        monkeypatch.setattr(web_export, "WEB_SOURCE", missing)
        target = tmp_path / "model-web"
        with caplog.at_level("WARNING", logger="refine_control.serve.device"):
            folder = device.prepare_device(model, target)
        assert not folder.available and folder.note == device.NO_RUNTIME
        assert not target.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["model", "web"]
        assert "on-device mode off" in caplog.text and "npm ci --prefix web" in caplog.text
        with make_client(FakeEngine(), model_dir=model, web_dir=target) as client:
            assert client.get("/v1/models").json()["device"]["note"] == device.NO_RUNTIME
            off = client.get("/device/")
            assert off.status_code == 404 and "npm ci --prefix web" in off.json()["detail"]
            assert str(tmp_path) not in off.text  # the page's note names no path of this machine


def test_folders_it_would_have_to_replace_are_refused(tmp_path):
    model = fake_model(tmp_path / "model", {"complete": True, "id": 1})
    a_file = tmp_path / "file"
    a_file.write_text("x")
    other = tmp_path / "other"
    (other / "src").mkdir(parents=True)
    (other / "src" / "notes.txt").write_text("mine")
    another_model = tmp_path / "another-web"
    fake_model(another_model / "model", {"complete": True, "id": 2})
    (another_model / "index.html").write_text("<!doctype html>")
    (another_model / "sw.js").write_text("")
    for target, words in (
        (a_file, "is not a directory"),
        (other, "is not a browser folder"),
        (another_model, "browser folder of another model"),
        (model, "is not a browser folder"),  # never into the model dir itself
    ):
        with pytest.raises(ConfigError, match=words):
            device.prepare_device(model, target)
    assert (other / "src" / "notes.txt").read_text() == "mine"


def test_web_flag_defaults_beside_the_model(tmp_path):
    args = build_parser().parse_args([str(tmp_path / "model"), "--web"])
    assert settings_from_args(args).web_dir == tmp_path / "model-web"
    args = build_parser().parse_args([str(tmp_path / "model"), "--web", str(tmp_path / "site")])
    assert settings_from_args(args).web_dir == tmp_path / "site"
    assert settings_from_args(build_parser().parse_args([str(tmp_path / "model")])).web_dir is None
