"""The exported web folder of the tiny model in headless Chromium: the self-test reproduces the Python runtime's
image from the same draws (≥ 40 dB; identical here), nothing is requested from another origin or after generation
starts, the page still generates offline after the first visit (service worker), and an altered graph is named and
refused. Needs Debian's `chromium` and web/node_modules (`npm ci --prefix web`); skipped with that reason otherwise.
"""

import json
import os
import stat
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from cdp import Browser, Page, find_chromium
from static_server import StaticServer

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Chromium for the browser test: apt-get install -y chromium"
)
SELFTEST = "document.getElementById('selftest').textContent"
STATUS = "document.getElementById('status').textContent"
MIN_PSNR_DB = 40.0


def run_selftest(page: Page, url: str, timeout: float = 300) -> dict:
    """Load `url` and wait for the self-test's JSON. ONNX Runtime Web builds its sessions on the page's thread, which
    can hold up an evaluation for many seconds on a busy machine: each poll may wait up to two minutes."""
    page.navigate(url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = page.send(
            "Runtime.evaluate", {"expression": SELFTEST, "returnByValue": True}, timeout=min(120, timeout)
        )
        text = reply["result"].get("value")
        if text:
            return json.loads(text)
        time.sleep(0.2)
    raise AssertionError(f"no self-test result after {timeout} s; status: {page.eval(STATUS)!r}")


def page_requests(browser: Browser, page: Page) -> list[dict]:
    return [
        e["params"]
        for e in browser.events
        if e.get("method") == "Network.requestWillBeSent" and e.get("sessionId") == page.session
    ]


def assert_matches_reference(report: dict, precision: str, keep: Path | None = None) -> None:
    """The self-test ran, reproduced the Python runtime's image and timed it; its JSON is kept in `keep`."""
    if keep is not None:
        keep.write_text(json.dumps(report, indent=1))
    assert report["ok"], report
    assert report["precision"] == precision
    assert report["identical"] or report["psnr_db"] >= MIN_PSNR_DB, report
    assert report["ms_per_image"] > 0 and report["first_image_ms"] > 0
    assert report["backend"]["backend"] == "wasm" and report["backend"]["simd"] is True
    assert report["backend"]["webgpu"].startswith(("available", "not available"))


def test_selftest_matches_python_offline_and_sends_nothing(web_export: dict, tmp_path: Path) -> None:
    assert web_export["code"] == 0, web_export["stdout"]
    assert f"web folder: {web_export['web']}" in web_export["stdout"]
    umask = os.umask(0)
    os.umask(umask)
    for path in (web_export["web"], web_export["web"] / "model", web_export["web"] / "index.html"):
        assert stat.S_IMODE(path.stat().st_mode) == (0o777 if path.is_dir() else 0o666) & ~umask, path
    browser = Browser(CHROMIUM, tmp_path / "profile")
    try:
        page = Page(browser)
        with StaticServer(web_export["web"]) as server:
            url = f"{server.url}/index.html?selftest=1"
            report = run_selftest(page, url)
            assert_matches_reference(report, "fp32", tmp_path / "selftest-fp32.json")
            assert report["timed_runs"] == 2
            # COOP/COEP made the page cross-origin isolated: WASM threads are on
            assert report["backend"]["isolated"] is True and report["backend"]["threads"] >= 1
            assert report["service_worker"] == "activated"
            started = report["generation_started_ms"] / 1000
            requests = page_requests(browser, page)
            assert requests, "the network log is empty"
            origins = {
                urlsplit(r["request"]["url"])[:2] for r in requests if not r["request"]["url"].startswith("data:")
            }
            assert origins == {urlsplit(server.url)[:2]}, origins
            late = [r["request"]["url"] for r in requests if r["wallTime"] > started]
            assert not late, f"requested after generation started: {late}"
            # The server sees the workers' requests too; Chromium's own update check of the service worker script
            # (GET /sw.js, scheduled by the browser, nothing of the page's) may land at any time.
            served_late = [path for when, path in server.requests if when > started and path != "/sw.js"]
            assert not served_late, f"the server saw requests after generation started: {served_late}"
            assert any(path.startswith("/lib/ort/") for _, path in server.requests)  # ORT Web from this folder
        # The server is gone and the network is offline: the service worker's copy still generates.
        page.send(
            "Network.emulateNetworkConditions",
            {"offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1},
        )
        offline = run_selftest(page, url + "&runs=0")
        assert_matches_reference(offline, "fp32", tmp_path / "selftest-fp32-offline.json")
        int8 = run_selftest(page, url + "&runs=0&precision=int8")
        assert_matches_reference(int8, "int8", tmp_path / "selftest-int8-offline.json")
        assert int8["files"]["denoiser"] == "denoiser.int8.onnx"
    finally:
        browser.close()


def test_altered_graph_is_named_and_refused(web_copy: Path, tmp_path: Path) -> None:
    graph = web_copy / "model" / "denoiser.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0x01
    graph.write_bytes(bytes(data))
    browser = Browser(CHROMIUM, tmp_path / "profile")
    try:
        page = Page(browser)
        with StaticServer(web_copy) as server:
            report = run_selftest(page, f"{server.url}/index.html?selftest=1")
            assert report["ok"] is False
            assert "denoiser.onnx" in report["error"] and "sha256" in report["error"], report
            assert "ms_per_image" not in report  # refused before generating
            assert "denoiser.onnx" in page.eval(STATUS)
            # CSP connect-src 'self': the page cannot send anything to another origin
            outcome = page.eval(
                "fetch('http://127.0.0.2:9/upload', {method: 'POST', body: 'x'}).then(() => 'sent', () => 'blocked')"
            )
            assert outcome == "blocked"
            assert not any(path.startswith("/upload") for _, path in server.requests)
    finally:
        browser.close()


@pytest.mark.slow  # distils the few-step student first (about 1.5 min here); .ci/run runs it with --run-slow
def test_few_step_student_with_embedded_guidance_and_fresh_noise(web_few_step: dict, tmp_path: Path) -> None:
    sample = json.loads((web_few_step["web"] / "selftest" / "sample.json").read_text())
    assert sample["scheduler"] == "lcm" and sample["steps"] == 2 and sample["noise_draws"] == 1
    manifest = json.loads((web_few_step["web"] / "model" / "manifest.json").read_text())
    assert manifest["pipeline"]["guidance_embedding_dim"] is not None
    assert manifest["pipeline"]["recommended_sampling"]["first_timestep"] == 759  # JS must start there too
    browser = Browser(CHROMIUM, tmp_path / "profile")
    try:
        page = Page(browser)
        with StaticServer(web_few_step["web"]) as server:
            report = run_selftest(page, f"{server.url}/index.html?selftest=1&runs=1")
        assert_matches_reference(report, "fp32", tmp_path / "selftest-few-step.json")
        assert report["guidance_embedded"] is True
    finally:
        browser.close()


def test_missing_graph_is_named_and_refused(web_copy: Path, tmp_path: Path) -> None:
    (web_copy / "model" / "vae_decoder.onnx").unlink()
    browser = Browser(CHROMIUM, tmp_path / "profile")
    try:
        page = Page(browser)
        with StaticServer(web_copy) as server:
            report = run_selftest(page, f"{server.url}/index.html?selftest=1")
        assert report["ok"] is False
        assert report["error"] == "model file vae_decoder.onnx is missing", report
        assert report["service_worker"] == "redundant"  # its install needs every file, so no offline copy
    finally:
        browser.close()
