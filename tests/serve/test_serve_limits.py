"""Every limit and bad input → a 4xx with a stable code, never a 5xx, never the input echoed back.

The model plays no part in these checks, so they run over the stand-in engine.
"""

import io
import json
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image
from serve_client import make_client
from serve_fakes import FakeEngine
from serve_helpers import b64, png_bytes

from refine_control.serve.settings import MAX_PROMPT_CHARS, MAX_SEED, MAX_STEPS

CANARY = "zq-canary-7f3e91"


def body(**overrides):
    out = {"prompt": f"a red circle {CANARY}", "control_image": b64(png_bytes()), "steps": 2, "seed": 1}
    out.update(overrides)
    return out


def post_raw(client, raw: bytes | str, content_type="application/json", path="/v1/generate"):
    return client.post(path, content=raw, headers={"Content-Type": content_type})


def assert_error(response, status: int, code: str | None = None):
    assert response.status_code == status, response.text
    data = response.json()
    assert set(data) <= {"error", "detail", "fields"} and data["error"] and data["detail"]
    if code is not None:
        assert data["error"] == code
    assert CANARY not in response.text
    assert "Traceback" not in response.text and "/work/" not in response.text
    return data


def png_with_header(width: int, height: int, idat: bytes = b"") -> bytes:
    """A PNG whose IHDR declares width × height (valid CRC) followed by `idat` and IEND: a bomb header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# ------------------------------------------------------------------------------------------------ images
def test_truncated_png_is_400(fake_client):
    data = png_bytes(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    for cut in (0.1, 0.5, 0.9):
        truncated = data[: int(len(data) * cut)]
        assert_error(fake_client.post("/v1/generate", json=body(control_image=b64(truncated))), 400, "invalid_image")


def test_corrupt_and_empty_images_are_400(fake_client):
    data = bytearray(png_bytes())
    data[40] ^= 0xFF  # inside IDAT: bad CRC / bad deflate stream
    assert_error(fake_client.post("/v1/generate", json=body(control_image=b64(bytes(data)))), 400, "invalid_image")
    jpeg_no_sof = b"\xff\xd8\xff\xe0" + b"\x00" * 64
    assert_error(fake_client.post("/v1/generate", json=body(control_image=b64(jpeg_no_sof))), 400, "invalid_image")
    assert_error(fake_client.post("/v1/generate", json=body(control_image="")), 422)
    assert_error(fake_client.post("/v1/generate", json=body(control_image="not base64!!")), 400, "invalid_base64")


def test_decompression_bomb_rejected_from_header(fake_client):
    start = time.monotonic()
    bomb = png_with_header(65535, 65535, zlib.compress(b"\x00" * 1000))
    assert_error(fake_client.post("/v1/generate", json=body(control_image=b64(bomb))), 413, "image_too_many_pixels")
    assert time.monotonic() - start < 2.0
    # a real flat image of 5000 × 5000 (25 MP > 16.7 MP): tens of KB on the wire, decided before decoding
    buffer = io.BytesIO()
    Image.new("L", (5000, 5000)).save(buffer, format="PNG")
    assert len(buffer.getvalue()) < 100_000
    assert_error(
        fake_client.post("/v1/generate", json=body(control_image=b64(buffer.getvalue()))), 413, "image_too_many_pixels"
    )


def test_huge_side_and_tiny_images(fake_client):
    long_thin = png_with_header(10000, 20)  # 200k pixels, but one side over max_image_side
    assert_error(fake_client.post("/v1/generate", json=body(control_image=b64(long_thin))), 413, "image_too_large")
    for size in ((1, 1), (8, 200)):
        tiny = png_bytes(size=size)
        assert_error(fake_client.post("/v1/generate", json=body(control_image=b64(tiny))), 422, "image_too_small")


@pytest.mark.parametrize("fmt", ["BMP", "GIF", "TIFF", "ICO"])
def test_disallowed_formats_are_415(fake_client, fmt):
    data = png_bytes(fmt=fmt)
    assert_error(fake_client.post("/v1/generate", json=body(control_image=b64(data))), 415, "unsupported_image_format")


def test_svg_and_text_are_415(fake_client):
    svg = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
    assert_error(fake_client.post("/v1/generate", json=body(control_image=b64(svg))), 415, "unsupported_image_format")


def test_animated_png_is_422(fake_client):
    frames = [Image.new("RGB", (32, 32), c) for c in ("red", "blue")]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="PNG", save_all=True, append_images=frames[1:])
    assert_error(
        fake_client.post("/v1/generate", json=body(control_image=b64(buffer.getvalue()))), 422, "animated_image"
    )


def test_jpeg_webp_and_data_url_accepted(fake_client):
    for fmt in ("JPEG", "WEBP"):
        r = fake_client.post("/v1/generate", json=body(control_image=b64(png_bytes(fmt=fmt))))
        assert r.status_code == 200, r.text
    r = fake_client.post("/v1/generate", json=body(control_image="data:image/png;base64," + b64(png_bytes())))
    assert r.status_code == 200


def test_image_byte_limit():
    with make_client(FakeEngine(), max_image_bytes=4096) as client:
        noisy = png_bytes(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8))
        assert len(noisy) > 4096
        assert_error(client.post("/v1/generate", json=body(control_image=b64(noisy))), 413, "image_too_large")


# ------------------------------------------------------------------------------------------------ body
def test_body_size_limit_with_length_and_chunked():
    with make_client(FakeEngine(), max_body_bytes=64 * 1024) as client:
        big = json.dumps(body(prompt="x" * 10, control_image="A" * 100_000))
        assert_error(post_raw(client, big), 413, "body_too_large")

        def chunks():  # no Content-Length: httpx sends it chunked
            for _ in range(20):
                yield b" " * 8192

        r = client.post("/v1/generate", content=chunks(), headers={"Content-Type": "application/json"})
        assert_error(r, 413, "body_too_large")
        assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize(
    "content_type", ["text/plain", "multipart/form-data; boundary=x", "application/x-www-form-urlencoded", ""]
)
def test_wrong_content_type_is_415(fake_client, content_type):
    assert_error(post_raw(fake_client, json.dumps(body()), content_type), 415, "unsupported_media_type")


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b'{"prompt": "a", "prompt": "b", "control_image": "x"}',
        b"[" * 10000 + b"]" * 10000,
        b" " * 100_000,
        b'{"prompt": "\xff\xfe"}',
    ],
    ids=["malformed", "duplicate-key", "deep-nesting", "whitespace", "not-utf8"],
)
def test_bad_json_is_400(fake_client, raw):
    assert_error(post_raw(fake_client, raw), 400, "invalid_json")


def test_huge_integers_are_4xx(fake_client):
    """Python refuses to parse integer literals over 4300 digits (ValueError inside `json.loads`): 400, not 500."""
    for digits in (4301, 5000, 100_000):
        raw = b'{"prompt": "p", "control_image": "x", "steps": ' + b"9" * digits + b"}"
        assert_error(post_raw(fake_client, raw), 400, "invalid_json")
    raw = b'{"prompt": "p", "control_image": "x", "seed": ' + b"9" * 4000 + b"}"  # parses; out of range
    assert_error(post_raw(fake_client, raw), 422, "invalid_request")


def test_non_object_and_unknown_fields_are_422(fake_client):
    assert_error(post_raw(fake_client, b"[1, 2]"), 422)
    data = assert_error(fake_client.post("/v1/generate", json=body(**{f"x{CANARY}": 1})), 422, "invalid_request")
    assert data["detail"].startswith("(unknown field)")


# ------------------------------------------------------------------------------------------------ fields
@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e308", "-1", '"7.5"', "true"])
def test_guidance_must_be_finite_and_in_range(fake_client, token):
    raw = json.dumps(body()).replace('"steps": 2', f'"steps": 2, "guidance_scale": {token}')
    data = assert_error(post_raw(fake_client, raw), 422, "invalid_request")
    assert "guidance_scale" in data["detail"]


@pytest.mark.parametrize("token", ["NaN", "3", "-0.5", '"1"'])
def test_controlnet_scale_bounds(fake_client, token):
    raw = json.dumps(body()).replace('"steps": 2', f'"steps": 2, "controlnet_scale": {token}')
    assert_error(post_raw(fake_client, raw), 422, "invalid_request")


@pytest.mark.parametrize("value", [0, -1, MAX_STEPS + 1, 10**9, 2**63, 1.5, "10", True])
def test_steps_range_and_type(fake_client, value):
    assert_error(fake_client.post("/v1/generate", json=body(steps=value)), 422, "invalid_request")


def test_omitted_or_null_steps_and_guidance_take_the_models_recommendation():
    engine = FakeEngine()
    engine.default_steps, engine.default_guidance_scale = 3, 2.5
    seen = []
    generate = engine.generate
    engine.generate = lambda params, *args: (seen.append(params), generate(params, *args))[1]
    with make_client(engine) as client:
        card = client.get("/v1/models").json()["models"][0]
        assert (card["recommended_steps"], card["recommended_guidance_scale"]) == (3, 2.5)
        request = {k: v for k, v in body().items() if k != "steps"}
        assert client.post("/v1/generate", json=request).status_code == 200
        assert client.post("/v1/generate", json={**request, "steps": None, "guidance_scale": None}).status_code == 200
        assert client.post("/v1/generate", json={**request, "steps": 7, "guidance_scale": 1.0}).status_code == 200
    assert [(p.steps, p.guidance_scale) for p in seen] == [(3, 2.5), (3, 2.5), (7, 1.0)]


def test_steps_setting_lowers_the_cap():
    with make_client(FakeEngine(), max_steps=5) as client:
        assert_error(client.post("/v1/generate", json=body(steps=6)), 422, "invalid_request")
        assert client.post("/v1/generate", json=body(steps=5)).status_code == 200


@pytest.mark.parametrize("value", [-1, MAX_SEED + 1, 2**64, 1e3, "abc", True])
def test_invalid_seed_is_422(fake_client, value):
    assert_error(fake_client.post("/v1/generate", json=body(seed=value)), 422, "invalid_request")


def test_null_seed_is_chosen_and_returned(fake_client):
    r = fake_client.post("/v1/generate", json=body(seed=None))
    assert r.status_code == 200
    assert 0 <= int(r.headers["x-seed"]) <= MAX_SEED


@pytest.mark.parametrize("value", [0, -8, 100_000, 63, 4, 136, 8.0, "64"])
def test_bad_width_height_are_422(fake_client, value):
    # FakeEngine: resolution 64, multiples of 8, max side 2 × 64 = 128
    for key in ("width", "height"):
        data = assert_error(fake_client.post("/v1/generate", json=body(**{key: value})), 422)
        assert data["error"] in ("invalid_request", "invalid_size")


def test_good_sizes(fake_client):
    from PIL import Image as PILImage

    r = fake_client.post("/v1/generate", json=body(width=128, height=8))
    assert r.status_code == 200
    assert PILImage.open(io.BytesIO(r.content)).size == (128, 8)


def test_long_prompt_is_422_and_not_echoed(fake_client):
    for prompt in (CANARY * (MAX_PROMPT_CHARS // len(CANARY) + 1), CANARY * 70_000):
        data = assert_error(fake_client.post("/v1/generate", json=body(prompt=prompt)), 422, "invalid_request")
        assert "prompt" in data["detail"]
    ok = "é" * MAX_PROMPT_CHARS  # counted in characters, not bytes
    assert fake_client.post("/v1/generate", json=body(prompt=ok)).status_code == 200


@pytest.mark.parametrize("prompt", ["nul\x00byte", "bell\x07", "\ud800 lone surrogate"])
def test_control_characters_and_surrogates_are_422(fake_client, prompt):
    raw = json.dumps(body(prompt=prompt))  # json.dumps escapes them as \u0000, \ud800
    assert_error(post_raw(fake_client, raw), 422, "invalid_request")


def test_exactly_one_image_field(fake_client):
    assert_error(fake_client.post("/v1/generate", json=body(control_image=None)), 422)
    assert_error(fake_client.post("/v1/generate", json=body(image=b64(png_bytes()))), 422)
    assert_error(fake_client.post("/v1/generate", json=body(preprocessor="canny")), 422)
    only_image = body(control_image=None, image=b64(png_bytes()), preprocessor="aux:hed")
    assert_error(fake_client.post("/v1/generate", json=only_image), 422)


def test_model_failure_is_500_without_internals_and_server_survives(fake_client, fake_engine):
    fake_engine.fail_next = True
    data = assert_error(fake_client.post("/v1/generate", json=body()), 500, "inference_failed")
    assert "secret" not in json.dumps(data)
    assert fake_client.post("/v1/generate", json=body()).status_code == 200


def test_preprocess_limits(fake_client):
    r = fake_client.post("/v1/preprocess", json={"image": b64(png_bytes(size=(100, 60))), "preprocessor": "canny"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size == (100, 60)  # under the max side: kept
    r = fake_client.post("/v1/preprocess", json={"image": b64(png_bytes(size=(512, 256)))})
    assert Image.open(io.BytesIO(r.content)).size == (128, 64)  # fitted into 2 × the model's size
    r = fake_client.post("/v1/preprocess", json={"image": b64(png_bytes(size=(100, 50))), "width": 40})
    assert Image.open(io.BytesIO(r.content)).size == (40, 20)
    assert_error(fake_client.post("/v1/preprocess", json={"image": b64(png_with_header(65535, 65535))}), 413)
    assert_error(fake_client.post("/v1/preprocess", json={"image": b64(png_bytes()), "preprocessor": "nope"}), 422)
    assert_error(fake_client.post("/v1/preprocess", json={}), 422)


def test_random_json_never_5xx(fake_client):
    """A small property check: arbitrary JSON values in every field → 2xx or 4xx, never 5xx."""
    rng = np.random.default_rng(0)
    values = [None, True, -1, 0, 1, 2**40, 1.5, -1e9, "", "x", "NaN", [], {}, [1], {"a": 1}, "A" * 300]
    fields = ["prompt", "negative_prompt", "control_image", "image", "preprocessor", "steps", "guidance_scale"]
    fields += ["controlnet_scale", "seed", "width", "height", "response_format"]
    for _ in range(120):
        request = body()
        for name in rng.choice(fields, size=rng.integers(1, 4), replace=False):
            request[str(name)] = values[rng.integers(len(values))]
        r = fake_client.post("/v1/generate", json=request)
        assert r.status_code < 500, (request, r.text)
