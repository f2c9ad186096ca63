"""Generation through the app over a real exported model (the tiny distilled student): outputs, determinism,
metadata-free PNGs, preprocessing, the jobs API with per-step progress, and the model summary."""

import io
import json

import numpy as np
import pytest
from PIL import Image
from serve_helpers import b64, png_bytes, png_chunks


def sketch(size=64, seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    image = np.zeros((size, size, 3), np.uint8)
    for _ in range(4):
        x, y = rng.integers(0, size - 16, 2)
        image[y : y + 12, x : x + 12] = 255
    return png_bytes(image)


def request(**overrides):
    out = {"prompt": "a red striped circle", "control_image": b64(sketch()), "steps": 4, "seed": 1234}
    out.update(overrides)
    return out


def test_models_summary(real_client):
    data = real_client.get("/v1/models").json()
    card = data["models"][0]
    assert card["resolution"] == 16 and card["size_multiple"] == 4 and card["precision"] == "fp32"
    assert card["preprocessor"] == "canny" and card["extra"]["parity_passed"] is True
    assert "/" not in json.dumps(card["name"])  # the dir's name only, never a path
    assert "source_run" not in json.dumps(card) and "/tmp" not in json.dumps(card)
    limits = data["limits"]
    assert limits["max_output_side"] == 32 and limits["min_output_side"] == 4
    assert "canny" in limits["preprocessors"]


def test_generate_png_is_deterministic_and_metadata_free(real_client):
    outputs = [real_client.post("/v1/generate", json=request()) for _ in range(3)]
    assert all(r.status_code == 200 and r.headers["content-type"] == "image/png" for r in outputs)
    assert outputs[0].content == outputs[1].content == outputs[2].content
    assert outputs[0].headers["x-seed"] == "1234"
    assert png_chunks(outputs[0].content) == [b"IHDR", b"IDAT", b"IEND"]  # no text, EXIF, time or ICC chunks
    image = Image.open(io.BytesIO(outputs[0].content))
    assert image.size == (16, 16) and image.mode == "RGB" and not image.info
    other_seed = real_client.post("/v1/generate", json=request(seed=1235)).content
    assert other_seed != outputs[0].content
    other_prompt = real_client.post("/v1/generate", json=request(prompt="a blue dotted square")).content
    assert other_prompt != outputs[0].content


def test_b64_json_matches_png(real_client):
    png = real_client.post("/v1/generate", json=request()).content
    data = real_client.post("/v1/generate", json=request(response_format="b64_json")).json()
    assert b64(png) == data["image"]
    assert (data["seed"], data["width"], data["height"], data["steps"]) == (1234, 16, 16, 4)


def test_sizes_guidance_and_preprocessor_paths(real_client):
    r = real_client.post("/v1/generate", json=request(width=32, height=24, guidance_scale=1.0))
    assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (32, 24)
    photo = np.random.default_rng(3).integers(0, 256, (80, 120, 3), dtype=np.uint8)
    for name in ("canny", "lineart", "shuffle", "inpaint", None):
        extra = {"preprocessor": name} if name else {}
        req = request(control_image=None, image=b64(png_bytes(photo, fmt="JPEG")), **extra)
        first = real_client.post("/v1/generate", json=req)
        assert first.status_code == 200, (name, first.text)
        assert real_client.post("/v1/generate", json=req).content == first.content  # deterministic, shuffle too
    r = real_client.post("/v1/generate", json=request(width=36))
    assert r.status_code == 422 and r.json()["error"] == "invalid_size"  # max side 2 × 16


def test_controlnet_scale_changes_the_image(real_client):
    with_control = real_client.post("/v1/generate", json=request(controlnet_scale=1.0)).content
    without = real_client.post("/v1/generate", json=request(controlnet_scale=0.0)).content
    assert with_control != without


def test_preprocess_returns_the_control_map(real_client):
    image = np.zeros((48, 64, 3), np.uint8)
    image[10:30, 20:40] = 255
    r = real_client.post("/v1/preprocess", json={"image": b64(png_bytes(image)), "preprocessor": "canny"})
    assert r.status_code == 200 and png_chunks(r.content) == [b"IHDR", b"IDAT", b"IEND"]
    edges = np.asarray(Image.open(io.BytesIO(r.content)))
    assert edges.shape == (24, 32, 3)  # fitted into the max output side (32), aspect kept
    assert edges.max() == 255 and edges.min() == 0


def test_jobs_api_progress_and_result(real_client):
    created = real_client.post("/v1/jobs", json=request(steps=8))
    assert created.status_code == 202 and created.headers["location"].endswith(created.json()["id"])
    job_id = created.json()["id"]
    with real_client.stream("GET", f"/v1/jobs/{job_id}/events") as stream:
        text = stream.read().decode()
    data = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]
    assert data[-1]["status"] == "done" and data[-1]["progress"] == {"step": 8, "total": 8}
    result = real_client.get(f"/v1/jobs/{job_id}/result")
    assert result.content == real_client.post("/v1/generate", json=request(steps=8)).content  # same as sync
    assert real_client.delete(f"/v1/jobs/{job_id}").status_code == 200
    assert real_client.get(f"/v1/jobs/{job_id}/result").status_code == 404


@pytest.mark.parametrize("steps", [1, 50])
def test_step_bounds_run(real_client, steps):
    assert real_client.post("/v1/generate", json=request(steps=steps)).status_code == 200


def test_bad_inputs_against_the_real_model_are_4xx(real_client):
    truncated = sketch()[:100]
    cases = [
        request(control_image=b64(truncated)),
        request(prompt="x" * 1001),
        request(seed=-1),
        request(width=1000),
    ]
    for case in cases:
        assert 400 <= real_client.post("/v1/generate", json=case).status_code < 500
    raw = json.dumps(request()).replace('"steps": 4', '"steps": 4, "guidance_scale": NaN')
    r = real_client.post("/v1/generate", content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 422
