"""The web folder's page on an emulated phone (412×915, touch): draw with a finger, generate on the device, upload a
photo (its Canny edges become the control image), refuse a file that is not an image. No request reaches the
server while an image is generated. Screenshots are kept in the test's tmp dir. Needs Chromium and web/node_modules.
"""

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from cdp import Browser, CDPError, Page, find_chromium
from PIL import Image
from static_server import StaticServer

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Chromium for the browser test: apt-get install -y chromium"
)
STATUS = "document.getElementById('status').textContent"


def lit_pixels(page: Page, canvas: str) -> int:
    return page.eval(
        f"(() => {{ const c = document.getElementById('{canvas}');"
        " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        " let n = 0; for (let i = 0; i < d.length; i += 4) n += d[i] > 128; return n; })()"
    )


def touch_stroke(page: Page, points: list[tuple[float, float]]) -> None:
    def touch(kind: str, point: tuple[float, float] | None) -> None:
        touches = [] if point is None else [{"x": point[0], "y": point[1], "id": 1}]
        page.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": touches})

    touch("touchStart", points[0])
    for point in points[1:]:
        touch("touchMove", point)
    touch("touchEnd", None)


def tap(page: Page, selector: str) -> None:
    x, y = page.center(selector)
    page.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": x, "y": y}]})
    page.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})


def screenshot(page: Page, path: Path) -> None:
    path.write_bytes(base64.b64decode(page.send("Page.captureScreenshot", {"format": "png"})["data"]))


def generate(page: Page, server: StaticServer) -> None:
    """Tap Generate and wait for the image; no request may reach the server meanwhile, except the browser's own
    update check of the service worker script (a GET of /sw.js that Chromium schedules after controlled loads;
    it carries nothing of the user's)."""
    before = len(server.requests)
    tap(page, "#generate")
    try:
        page.wait_for(f"{STATUS}.startsWith('Step') || {STATUS}.startsWith('Done')", timeout=10)
    except CDPError:  # a busy machine let the tap miss: press the button directly
        page.eval("document.getElementById('generate').click()")
    page.wait_for(f"{STATUS}.startsWith('Done')", timeout=240, context=STATUS)
    during = [path for _, path in server.requests[before:] if path != "/sw.js"]
    assert during == [], during


def test_phone_draw_generate_upload(web_export: dict, tmp_path: Path) -> None:
    assert web_export["code"] == 0, web_export["stdout"]
    browser = Browser(CHROMIUM, tmp_path / "profile")
    try:
        page = Page(browser)
        page.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": 412, "height": 915, "deviceScaleFactor": 2.625, "mobile": True},
        )
        page.send("Emulation.setTouchEmulationEnabled", {"enabled": True, "maxTouchPoints": 5})
        with StaticServer(web_export["web"]) as server:
            page.navigate(f"{server.url}/index.html")
            page.wait_for(f"{STATUS} === 'Ready.'", timeout=240, context=STATUS)
            assert page.eval("document.documentElement.scrollWidth") <= 412  # no sideways scrolling on a phone
            x, y = page.center("#sketch")
            touch_stroke(page, [(x - 60 + 6 * i, y - 40 + 4 * i) for i in range(20)])
            touch_stroke(page, [(x + 40, y - 60 + 6 * i) for i in range(20)])
            assert lit_pixels(page, "sketch") > 500  # the finger strokes landed on the canvas
            page.type_into("#prompt", "a red striped circle")
            generate(page, server)
            size = page.eval("document.getElementById('result').width")
            assert size == web_export_resolution(web_export)
            screenshot(page, tmp_path / "phone-sketch.png")

            # a photo: its Canny edges are the control image
            yy, xx = np.mgrid[0:96, 0:96]
            photo = np.zeros((96, 96, 3), np.uint8)
            photo[(yy - 48) ** 2 + (xx - 48) ** 2 < 900] = (230, 40, 30)
            buffer = io.BytesIO()
            Image.fromarray(photo).save(buffer, format="PNG")
            (tmp_path / "photo.png").write_bytes(buffer.getvalue())
            page.set_files("#photo", [str(tmp_path / "photo.png")])
            page.wait_for(f"{STATUS}.startsWith('Photo loaded')", timeout=30, context=STATUS)
            edges = lit_pixels(page, "sketch")
            assert 0 < edges < 256 * 256 // 2  # the sketch canvas shows the photo's edges, not the photo
            generate(page, server)
            screenshot(page, tmp_path / "phone-photo.png")

            # not an image: a message, and the page still works
            (tmp_path / "notes.txt").write_text("not an image")
            page.set_files("#photo", [str(tmp_path / "notes.txt")])
            page.wait_for(f"{STATUS}.includes('is not an image')", timeout=30, context=STATUS)
            assert page.eval("document.getElementById('generate').disabled") is False
    finally:
        browser.close()
    assert (tmp_path / "phone-sketch.png").stat().st_size > 0


def web_export_resolution(web_export: dict) -> int:
    import json

    return json.loads((web_export["web"] / "model" / "manifest.json").read_text())["pipeline"]["resolution"]
