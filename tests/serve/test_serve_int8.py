"""README's headline serve command, `refine-serve MODEL --precision int8`, on a real INT8 export of the tiny run:
the server starts on the INT8 denoiser, says so in /v1/models, and generates an image."""

import io

import numpy as np
from PIL import Image
from serve_helpers import b64, png_bytes, start_server


def test_serve_int8_generates_an_image(tiny_run_dir, tmp_path):
    from refine_control.export.cli import main

    model = tmp_path / "model"
    args = ["-o", str(model), "--exporter", "torchscript", "--int8", "--calibration-samples", "1"]
    args += ["--int8-op-types", "Conv,MatMul,Gemm"]  # every node of those types: no measured selection, seconds
    assert main([str(tiny_run_dir), *args, "--parity-samples", "1", "--steps", "2", "-q"]) == 0
    assert (model / "denoiser.int8.onnx").is_file()

    server = start_server(model, tmp_path / "serve", "--precision", "int8")
    try:
        with server.client() as client:
            card = client.get("/v1/models").json()["models"][0]
            assert card["precision"] == "int8" and "int8" in card["available_precisions"]
            body = {"prompt": "a red circle", "control_image": b64(png_bytes()), "steps": 2, "seed": 3}
            r = client.post("/v1/generate", json=body)
            assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text[:500]
    finally:
        code = server.stop()
    assert code == 0, server.log()
    image = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"))
    assert image.shape == (card["resolution"], card["resolution"], 3) and image.std() > 0
