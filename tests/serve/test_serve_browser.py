"""The web page in headless Chromium against `refine-serve` over the real tiny model: draw a sketch, type a prompt,
watch per-step progress, get the image; then upload a photo with a preprocessor. The page's history, reuse seed,
result → control, eraser and undo (mouse and touch), and a sketch canvas in the output's aspect ratio; screenshots at
a desktop and a phone viewport. Nothing leaves loopback.

Needs Debian's `chromium` (`apt-get install -y chromium`); skipped with that reason when it is missing.
"""

import io
import json
import os
import re
import shutil

import numpy as np
import pytest
from cdp import Browser, CDPError, Page, find_chromium
from PIL import Image
from serve_helpers import b64, png_bytes, start_server

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


def assert_no_page_errors(browser: Browser, server) -> None:
    """Only loopback requests; no JS error, no CSP violation."""
    requests = [
        e["params"]["request"]["url"] for e in browser.events if e.get("method") == "Network.requestWillBeSent"
    ]
    assert requests and all(u.startswith((server.url, "blob:", "data:")) for u in requests), requests
    errors = [e for e in browser.events if e.get("method") == "Runtime.exceptionThrown"]
    errors += [
        e for e in browser.events if e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error"
    ]
    assert errors == [], json.dumps(errors)[:2000]


# JS run in the page by the tests (Runtime.evaluate is not bound by the page's CSP).
LIT = (
    "(() => { const c = document.getElementById('sketch');"
    " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
    " let n = 0; for (let i = 0; i < d.length; i += 4) n += d[i] > 128; return n; })()"
)
SAVE_SKETCH = (
    "(() => { const c = document.getElementById('sketch');"
    " window.__saved = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; })()"
)
SKETCH_IS_SAVED = (
    "(() => { const c = document.getElementById('sketch');"
    " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
    " return d.length === window.__saved.length && d.every((v, i) => v === window.__saved[i]); })()"
)


def image_pixels(page: Page, selector: str) -> np.ndarray:
    """An <img>'s pixels at its natural size (RGBA), read back through a canvas."""
    width, height, data = page.eval(
        f"(() => {{ const img = document.querySelector({json.dumps(selector)}); const c = document.createElement('canvas');"
        " c.width = img.naturalWidth; c.height = img.naturalHeight; const g = c.getContext('2d');"
        " g.drawImage(img, 0, 0); return [c.width, c.height, Array.from(g.getImageData(0, 0, c.width, c.height).data)]; })()"
    )
    return np.asarray(data, np.uint8).reshape(height, width, 4)


def sketch_cells(page: Page, width: int, height: int) -> np.ndarray:
    """The sketch's red channel at the centre of each output pixel's block (the canvas is k × the output size)."""
    data = page.eval(
        f"(() => {{ const c = document.getElementById('sketch'); const k = c.width / {width};"
        " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; const out = [];"
        f" for (let y = 0; y < {height}; y++) for (let x = 0; x < {width}; x++)"
        " out.push(d[4 * (Math.floor((y + 0.5) * k) * c.width + Math.floor((x + 0.5) * k))]); return out; })()"
    )
    return np.asarray(data, np.uint8).reshape(height, width)


def select_size(page: Page, width: int, height: int) -> None:
    page.eval(
        f"(() => {{ for (const [id, v] of [['width', {width}], ['height', {height}]]) {{"
        " const s = document.getElementById(id); s.value = String(v); s.dispatchEvent(new Event('change')); } })()"
    )


def history_seeds(page: Page) -> list[int]:
    return [int(s) for s in page.eval("[...document.querySelectorAll('#history li')].map((li) => li.dataset.seed)")]


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

        assert_no_page_errors(browser, server)
    except Exception:
        print(server.log()[-4000:])  # shown by pytest with the failure
        raise
    finally:
        browser.close()
        code = server.stop()
    assert code == 0
    audit = server.report()
    assert audit["connect"] == [] and audit["getaddrinfo"] == [], audit


def test_page_history_reuse_control_eraser_undo_and_aspect(tiny_model_dir, tmp_path):
    """Draw (mouse and touch), undo, erase; a 32 × 16 output gets a 2:1 canvas; two results in the history with their
    seeds and named downloads; reuse seed redraws the first result exactly; result → control puts the server's Canny
    map of it on the canvas (undoable); screenshots at a desktop and a phone viewport, nothing wider than the phone."""
    server = start_server(tiny_model_dir, tmp_path / "srv", "--no-access-log")
    browser = Browser(CHROMIUM, tmp_path / "chrome-profile")
    try:
        page = Page(browser)
        page.navigate(server.url + "/")
        wait_status(page, "Ready.")

        # a non-square output: the canvas takes its aspect ratio, in its pixels and on screen
        select_size(page, 32, 16)
        pixels, shown = page.eval(
            "(() => { const c = document.getElementById('sketch'); const r = c.getBoundingClientRect();"
            " return [[c.width, c.height], [c.clientWidth, c.clientHeight]]; })()"
        )
        assert pixels[0] == 2 * pixels[1] and pixels[0] % 32 == 0, pixels
        assert abs(shown[0] / shown[1] - 2) < 0.02, shown

        # a mouse stroke, undone: the canvas is back to its exact pixels
        x, y = page.center("#sketch")
        page.drag([(x - 60 + 6 * i, y - 20 + 2 * i) for i in range(20)])
        page.eval(SAVE_SKETCH)
        lit = page.eval(LIT)
        page.drag([(x + 40, y - 30 + 3 * i) for i in range(20)])
        assert page.eval(LIT) > lit + 100
        assert not page.eval(SKETCH_IS_SAVED)
        page.click("#undo")
        assert page.eval(SKETCH_IS_SAVED)
        assert page.eval(LIT) == lit

        # the eraser takes the first stroke away, a touch stroke draws a new one, Ctrl+Z undoes it
        page.click("#tool-eraser")
        page.drag([(x - 60 + 6 * i, y - 20 + 2 * i) for i in range(20)])
        assert page.eval(LIT) < lit / 5
        page.click("#tool-brush")
        page.eval(SAVE_SKETCH)
        page.touch_drag([(x - 50 + 5 * i, y + 20 - 2 * i) for i in range(20)])
        assert page.eval(LIT) > 200
        page.eval("document.body.focus()")
        page.send("Input.dispatchKeyEvent", {"type": "keyDown", "key": "z", "code": "KeyZ", "modifiers": 2})
        page.send("Input.dispatchKeyEvent", {"type": "keyUp", "key": "z", "code": "KeyZ", "modifiers": 2})
        assert page.eval(SKETCH_IS_SAVED)
        page.touch_drag([(x - 50 + 5 * i, y + 20 - 2 * i) for i in range(20)])
        page.drag([(x - 70 + 7 * i, y - 25 + 2 * i) for i in range(20)])

        # two results with random seeds: both in the history, newest first, each with its seed and settings
        page.type_into("#prompt", "A red, striped circle!")
        page.eval("document.getElementById('steps').value = '4'")
        seeds = []
        for _ in range(2):
            start_generation(page)
            wait_status(page, "Done.")
            seeds.append(int(page.eval("document.getElementById('seed-used').textContent").removeprefix("seed ")))
        jobs = page.posted_json(server.url + "/v1/jobs")
        assert len(jobs) == 2 and all("seed" not in job for job in jobs)  # the server picked both seeds
        assert seeds[0] != seeds[1]
        assert history_seeds(page) == seeds[::-1]
        assert page.eval("document.getElementById('download').download") == (
            f"refine-a-red-striped-circle-seed{seeds[1]}.png"
        )
        info = page.eval("document.getElementById('result-info').textContent")
        assert "32×16 · 4 steps" in info and re.search(r"\d+\.\d\d s$", info), info  # time per image shown
        captions = page.eval("[...document.querySelectorAll('#history li')].map((li) => li.textContent)")
        assert all(
            "A red, striped circle!" in c and f"seed {seed}" in c
            for c, seed in zip(captions, seeds[::-1], strict=True)
        )

        # view the first result from the history, reuse its seed and settings: the request carries the seed and the
        # image is the first one again, pixel for pixel
        page.click("#history li:last-child button")
        assert page.eval("document.getElementById('seed-used').textContent") == f"seed {seeds[0]}"
        assert page.eval("document.getElementById('download').download").endswith(f"-seed{seeds[0]}.png")
        first = image_pixels(page, "#result")
        page.eval("document.getElementById('steps').value = '9'; document.getElementById('width').value = '16'")
        page.click("#reuse")
        assert page.eval("document.getElementById('seed').value") == str(seeds[0])
        assert page.eval("[document.getElementById('steps').value, document.getElementById('width').value]") == [
            "4",
            "32",
        ]
        start_generation(page)
        wait_status(page, "Done.")
        sent = page.posted_json(server.url + "/v1/jobs")[-1]
        assert (sent["seed"], sent["steps"], sent["width"], sent["height"]) == (seeds[0], 4, 32, 16)
        assert history_seeds(page) == [seeds[0], seeds[1], seeds[0]]
        assert np.array_equal(image_pixels(page, "#result"), first)

        # result → control: the Canny map of the result (as the server makes it) lands on the canvas; undo restores
        page.eval(SAVE_SKETCH)
        page.click("#use-control")
        page.wait_for("document.getElementById('sketch-note').textContent.includes('canny map')")
        buffer = io.BytesIO()
        Image.fromarray(first[..., :3]).save(buffer, format="PNG")
        with server.client() as client:
            answer = client.post(
                "/v1/preprocess",
                json={"image": b64(buffer.getvalue()), "preprocessor": "canny", "width": 32, "height": 16},
            )
        assert answer.status_code == 200, answer.text
        control = np.asarray(Image.open(io.BytesIO(answer.content)).convert("RGB"))[..., 0]
        assert 0 < (control > 128).sum() < control.size  # a real edge map, neither empty nor full
        assert np.array_equal(sketch_cells(page, 32, 16), control)
        page.click("#undo")
        assert page.eval(SKETCH_IS_SAVED)

        # screenshots: the desktop grid and the phone's single column, nothing wider than the phone
        shots = {"desktop": (1280, 900, False), "phone": (390, 844, True)}
        for name, (width, height, mobile) in shots.items():
            path = tmp_path / f"page-{name}.png"
            page.screenshot(path, width, height, mobile)
            assert Image.open(path).size[0] == width
            wide = page.eval(
                "Math.max(document.documentElement.scrollWidth, document.getElementById('sketch')"
                ".getBoundingClientRect().right, document.getElementById('history').getBoundingClientRect().right)"
            )
            assert wide <= width, (name, wide)
            if os.environ.get("REFINE_SCREENSHOT_DIR"):
                shutil.copy(path, os.environ["REFINE_SCREENSHOT_DIR"])
        assert_no_page_errors(browser, server)
    except Exception:
        print(server.log()[-4000:])
        raise
    finally:
        browser.close()
        code = server.stop()
    assert code == 0


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
