"""`refine-serve MODEL --web DIR`, the on-device mode, with the tiny exported model: the server writes the browser folder
at start (or serves the one `refine-export --web` wrote), its page links to `/device/`, and there headless Chromium
generates an image in the browser, cross-origin isolated, while the server sees only static GETs of that folder: no
POST, nothing under /v1, no prompt. Needs Debian's `chromium` and web/node_modules (`npm ci --prefix web`).
"""

import contextlib
import json
import re
from pathlib import Path

import pytest
from cdp import Browser, CDPError, Page, find_chromium
from serve_client import make_client
from serve_fakes import FakeEngine
from serve_helpers import start_server

from refine_control.serve.cli import main as serve_main

CHROMIUM = find_chromium()
STATUS = "document.getElementById('status').textContent"
ACCESS = re.compile(r'"([A-Z]+) (\S+) HTTP/[\d.]+" (\d{3})')
CANARY = "zebra-canary-prompt-5521"
ISOLATION = {"cross-origin-opener-policy": "same-origin", "cross-origin-embedder-policy": "require-corp"}


def access_log(text: str) -> list[tuple[str, str, int]]:
    """(method, path, status) of every request in the server's access log."""
    return [(m, p, int(s)) for m, p, s in ACCESS.findall(text)]


def test_prebuilt_folder_is_served_as_static_files(web_export: dict) -> None:
    """The folder `refine-export --web` wrote for this model is served as it is: index at /device/, the MIME types
    ORT Web needs, the page's own CSP, the isolation headers; no listing, no escape, nothing rewritten."""
    assert web_export["code"] == 0, web_export["stdout"]
    web = web_export["web"]
    before = {p: p.stat().st_mtime_ns for p in web.rglob("*")}
    with make_client(FakeEngine(), model_dir=web_export["model"], web_dir=web) as client:
        assert client.get("/v1/models").json()["device"] == {"available": True, "url": "/device/", "note": None}
        redirect = client.get("/device", follow_redirects=False)
        assert redirect.status_code in (301, 307) and redirect.headers["location"].endswith("/device/")
        index = client.get("/device/")
        assert index.status_code == 200 and index.content == (web / "index.html").read_bytes()
        csp = index.headers["content-security-policy"]
        assert "'wasm-unsafe-eval'" in csp and "connect-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "'sha256-" in csp  # the import map's hash, from the page's own policy
        types = {
            "src/app.js": "text/javascript",
            "lib/ort/ort.min.mjs": "text/javascript",
            "lib/ort/ort-wasm-simd-threaded.wasm": "application/wasm",
            "model/manifest.json": "application/json",
            "model/denoiser.onnx": "application/octet-stream",
            "sw.js": "text/javascript",
        }
        for name, media in types.items():
            for response in (client.get(f"/device/{name}"), client.head(f"/device/{name}")):
                assert response.status_code == 200, name
                assert response.headers["content-type"] == media, name
                assert response.headers["content-security-policy"] == csp, name  # workers get it too
                for header, value in ISOLATION.items():
                    assert response.headers[header] == value, (name, header)
                assert response.headers["x-content-type-options"] == "nosniff"
        assert client.get("/device/model/denoiser.onnx").content == (web / "model" / "denoiser.onnx").read_bytes()
        for path in ("/device/model/", "/device/lib/", "/device/../manifest.json", "/device/%2e%2e/static/app.js"):
            assert client.get(path).status_code == 404, path
        assert client.post("/device/index.html").status_code == 405
    assert {p: p.stat().st_mtime_ns for p in web.rglob("*")} == before


def test_a_folder_it_cannot_use_is_exit_2_before_binding(web_export: dict, tmp_path: Path, capsys) -> None:
    other = tmp_path / "site"
    (other / "docs").mkdir(parents=True)
    (other / "docs" / "a.txt").write_text("mine")
    code = serve_main([str(web_export["model"]), "--web", str(other), "--port", "1", "--no-warmup"])
    err = capsys.readouterr().err
    assert code == 2 and "is not a browser folder" in err and "Traceback" not in err
    assert (other / "docs" / "a.txt").read_text() == "mine"


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium for the browser test: apt-get install -y chromium")
def test_on_device_page_generates_in_the_browser_and_sends_nothing(web_export: dict, tmp_path: Path) -> None:
    assert web_export["code"] == 0, web_export["stdout"]
    site = tmp_path / "device-web"  # new: refine-serve writes it from the model at start
    server = start_server(web_export["model"], tmp_path / "srv", "--web", str(site), "--threads", "1")
    browser = Browser(CHROMIUM, tmp_path / "profile")
    try:
        assert (site / "index.html").is_file() and (site / "model" / "manifest.json").read_bytes() == (
            web_export["model"] / "manifest.json"
        ).read_bytes()
        assert "on-device page at /device/" in server.log()
        page = Page(browser)
        page.navigate(server.url + "/")
        page.wait_for(f"{STATUS} === 'Ready.'", timeout=90, context=STATUS)
        assert page.eval("crossOriginIsolated") is True  # the server page is isolated too
        assert page.eval("document.getElementById('device').hidden") is False
        link = page.eval("document.getElementById('device-link').href")
        assert link == server.url + "/device/"

        log_at_navigation = len(server.log())
        page.navigate(link)
        page.wait_for(f"{STATUS} === 'Ready.'", timeout=240, context=STATUS)
        assert page.eval("crossOriginIsolated") is True  # COOP/COEP from refine-serve: WASM threads are possible
        assert "single-thread" not in page.eval("document.getElementById('note').textContent").lower()
        log_at_ready = len(server.log())
        x, y = page.center("#sketch")
        page.drag([(x - 60 + 6 * i, y - 40 + 4 * i) for i in range(20)])
        page.type_into("#prompt", CANARY)
        page.click("#generate")
        with contextlib.suppress(CDPError):  # a busy machine may let the click miss: press the button directly
            page.wait_for(f"{STATUS}.startsWith('Step') || {STATUS}.startsWith('Done')", timeout=10)
        if not page.eval(f"{STATUS}.startsWith('Step') || {STATUS}.startsWith('Done')"):
            page.eval("document.getElementById('generate').click()")
        page.wait_for(f"{STATUS}.startsWith('Done')", timeout=240, context=STATUS)
        assert "on this device" in page.eval(STATUS)
        lit = page.eval(
            "(() => { const c = document.getElementById('result'); const d = c.getContext('2d')"
            ".getImageData(0, 0, c.width, c.height).data; let n = 0;"
            " for (let i = 0; i < d.length; i += 4) n += d[i] + d[i + 1] + d[i + 2] > 0; return [c.width, n]; })()"
        )
        resolution = json.loads((site / "model" / "manifest.json").read_text())["pipeline"]["resolution"]
        assert lit[0] == resolution and lit[1] > 0  # the image was drawn on the page

        log = server.log()
        # From the page's load on: GETs of the browser folder only; nothing under /v1, no POST, no prompt.
        device_requests = access_log(log[log_at_navigation:])
        assert device_requests, "the access log is empty"
        assert all(m == "GET" and p.startswith("/device/") for m, p, _ in device_requests), device_requests
        # While the image was made: nothing at all, except the browser's own update check of the service worker
        # script (scheduled by Chromium after controlled loads; it carries nothing of the user's).
        during = [p for _, p, _ in access_log(log[log_at_ready:]) if p != "/device/sw.js"]
        assert during == [], during
        assert CANARY not in log
        requests = [
            e["params"]["request"]
            for e in browser.events
            if e.get("method") == "Network.requestWillBeSent" and e.get("sessionId") == page.session
        ]
        after_load = requests[[r["url"] for r in requests].index(link) :]
        assert after_load and all(r["method"] == "GET" and "postData" not in r for r in after_load)
        assert all(r["url"].startswith((server.url + "/device/", "blob:", "data:")) for r in after_load), after_load
        assert not any(CANARY in r["url"] for r in requests)
        errors = [e for e in browser.events if e.get("method") == "Runtime.exceptionThrown"]
        errors += [
            e
            for e in browser.events
            if e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error"
        ]
        assert errors == [], json.dumps(errors)[:2000]  # no JS error, no CSP violation
    except Exception:
        print(server.log()[-4000:])
        raise
    finally:
        browser.close()
        code = server.stop()
    assert code == 0
    # Written where declared and nowhere else: no temp dir or lock left beside it, nothing in HOME, TMPDIR or cwd.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["device-web", "profile", "srv"]
    for sub in ("home", "tmp", "cwd"):
        assert list((tmp_path / "srv" / sub).iterdir()) == [], sub
    audit = server.report()
    assert audit["connect"] == [] and audit["getaddrinfo"] == [] and audit["torch_imported"] is False, audit
