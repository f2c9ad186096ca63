"""The web page in headless Chromium against `refine-serve` over the real tiny model: draw a sketch, type a prompt,
watch per-step progress, get the image; then upload a photo with a preprocessor. Nothing leaves loopback.

Needs Debian's `chromium` (`apt-get install -y chromium`); skipped with that reason when it is missing.
"""

import io
import json

import numpy as np
import pytest
from cdp import Browser, CDPError, Page, find_chromium
from PIL import Image
from serve_helpers import png_bytes, start_server

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Chromium for the browser test: apt-get install -y chromium"
)


STATUS = "document.getElementById('status').textContent"


def wait_status(page: Page, text: str, timeout: float = 90) -> None:
    page.wait_for(f"{STATUS} === {text!r}", timeout=timeout, context=STATUS)


def start_generation(page: Page) -> None:
    """Click Generate with a real mouse event; if a busy machine let the click miss, press the button directly."""
    page.click("#generate")
    try:
        page.wait_for(f"{STATUS} !== 'Ready.' && {STATUS} !== 'Done.'", timeout=5)
    except CDPError:
        page.eval("document.getElementById('generate').click()")


def assert_page_shows_what_the_api_draws(page: Page, server, body: dict) -> None:
    """The page's result pixels (read back through a canvas; the CSP's connect-src 'self' keeps even blob: URLs
    from being fetched) equal the API's image for `body` with the drawn sketch as its control image."""
    shown = page.eval(
        "(() => { const img = document.getElementById('result'); const c = document.createElement('canvas');"
        " c.width = img.naturalWidth; c.height = img.naturalHeight; const g = c.getContext('2d');"
        " g.drawImage(img, 0, 0); return Array.from(g.getImageData(0, 0, c.width, c.height).data); })()"
    )
    canvas = page.eval("document.getElementById('sketch').toDataURL('image/png').split(',')[1]")
    with server.client() as client:
        direct = client.post("/v1/generate", json={**body, "control_image": canvas})
    expected = np.asarray(Image.open(io.BytesIO(direct.content)).convert("RGBA"))
    assert np.array_equal(np.asarray(shown, np.uint8).reshape(expected.shape), expected)


def test_page_draw_generate_upload(tiny_model_dir, tmp_path):
    server = start_server(tiny_model_dir, tmp_path / "srv", "--no-access-log")
    browser = Browser(CHROMIUM, tmp_path / "chrome-profile")
    try:
        page = Page(browser)
        page.navigate(server.url + "/")
        wait_status(page, "Ready.")
        assert "16 px" in page.eval("document.getElementById('model').textContent")

        # draw two strokes on the sketch canvas with real mouse events
        x, y = page.center("#sketch")
        page.drag([(x - 80 + 8 * i, y - 60 + 5 * i) for i in range(20)])
        page.drag([(x + 60, y - 80 + 8 * i) for i in range(20)])
        lit = page.eval(
            "(() => { const c = document.getElementById('sketch');"
            " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
            " let n = 0; for (let i = 0; i < d.length; i += 4) n += d[i] > 128; return n; })()"
        )
        assert lit > 200  # the strokes landed on the canvas

        page.type_into("#prompt", "a red striped circle")
        page.eval("document.getElementById('seed').value = '42'; document.getElementById('steps').value = '50'")
        page.eval("document.getElementById('width').value = '32'; document.getElementById('height').value = '32'")
        page.eval(
            "window.__seen = []; new MutationObserver(() => window.__seen.push("
            "document.getElementById('status').textContent)).observe(document.getElementById('status'),"
            " {childList: true, characterData: true, subtree: true})"
        )
        start_generation(page)
        wait_status(page, "Done.")
        seen = page.eval("window.__seen")
        assert any(s.startswith("Step ") for s in seen), seen  # per-step progress was shown
        assert page.eval("document.getElementById('progress').value") == 50
        assert page.eval("document.getElementById('result').naturalWidth") == 32
        assert page.eval("document.getElementById('seed-used').textContent") == "seed 42"

        # the page shows exactly what the API makes from the drawn canvas
        body = {"prompt": "a red striped circle", "seed": 42, "steps": 50, "width": 32, "height": 32}
        assert_page_shows_what_the_api_draws(page, server, body)

        # upload a photo, preview its control map, generate from it
        photo = tmp_path / "photo.jpg"
        rng = np.random.default_rng(0)
        image = np.full((96, 128, 3), 240, np.uint8)
        image[20:70, 30:100] = rng.integers(0, 80, 3, dtype=np.uint8)
        photo.write_bytes(png_bytes(image, fmt="JPEG"))
        page.click("#tab-upload")
        page.set_files("#file", [str(photo)])
        page.eval("document.getElementById('preprocessor').value = 'canny'")
        page.click("#preview")
        page.wait_for("document.getElementById('control-preview').naturalWidth > 0")
        page.eval("document.getElementById('steps').value = '4'")
        start_generation(page)
        wait_status(page, "Done.")

        requests = [
            e["params"]["request"]["url"] for e in browser.events if e.get("method") == "Network.requestWillBeSent"
        ]
        assert requests and all(u.startswith((server.url, "blob:", "data:")) for u in requests), requests
        errors = [e for e in browser.events if e.get("method") == "Runtime.exceptionThrown"]
        errors += [
            e
            for e in browser.events
            if e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error"
        ]
        assert errors == [], json.dumps(errors)[:2000]  # no JS error, no CSP violation
    except Exception:
        print(server.log()[-4000:])  # shown by pytest with the failure
        raise
    finally:
        browser.close()
        code = server.stop()
    assert code == 0
    audit = server.report()
    assert audit["connect"] == [] and audit["getaddrinfo"] == [], audit


def test_page_uses_a_few_step_students_recommendation(few_step_model, tmp_path):
    """A few-step student's page starts at its recommended steps and guidance, and draws what the API draws for a
    request that names neither."""
    server = start_server(few_step_model[1], tmp_path / "srv", "--no-access-log")
    browser = Browser(CHROMIUM, tmp_path / "chrome-profile")
    try:
        page = Page(browser)
        page.navigate(server.url + "/")
        wait_status(page, "Ready.")
        assert page.eval("document.getElementById('steps').value") == "2"
        assert float(page.eval("document.getElementById('guidance').value")) == 3.0
        x, y = page.center("#sketch")
        page.drag([(x - 60 + 6 * i, y - 40 + 4 * i) for i in range(20)])
        page.type_into("#prompt", "a blue square")
        page.eval("document.getElementById('seed').value = '7'")
        start_generation(page)
        wait_status(page, "Done.")
        assert page.eval("document.getElementById('progress').value") == 2
        assert_page_shows_what_the_api_draws(page, server, {"prompt": "a blue square", "seed": 7})
    except Exception:
        print(server.log()[-4000:])
        raise
    finally:
        browser.close()
        code = server.stop()
    assert code == 0


def test_page_asks_for_the_token(tiny_model_dir, tmp_path):
    token = "page-token-" + "z" * 24
    server = start_server(tiny_model_dir, tmp_path / "srv", "--no-access-log", token=token)
    browser = Browser(CHROMIUM, tmp_path / "chrome-profile")
    try:
        page = Page(browser)
        page.navigate(server.url + "/")
        page.wait_for("!document.getElementById('auth').hidden")
        assert "token" in page.eval("document.getElementById('status').textContent")
        page.type_into("#token", token)
        page.click("#token-save")
        wait_status(page, "Ready.")
        page.type_into("#prompt", "a blue square")
        start_generation(page)  # the job, its event stream and its result all carry the bearer header
        wait_status(page, "Done.")
        assert page.eval("document.getElementById('result').naturalWidth") == 16
    finally:
        browser.close()
        code = server.stop()
    assert code == 0
    assert token not in server.log()
