"""The device install: a fresh virtual environment with only `pip install refine-control[serve]` has no torch,
OpenCV or `tokenizers`, yet serves an exported model and draws control maps (the numpy preprocessors, the same code as in
training); a training command there says which extra to install (exit 2); `--web` (the on-device mode, which needs
npm packages) is off there with a note. It installs the runtime's wheels from the package index into a new venv
(about a minute and a half), part of the default test run."""

import base64
import io
import shutil
import subprocess
import venv
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from serve_helpers import png_bytes, start_server

from refine_control.preprocess import get_preprocessor

ROOT = Path(__file__).resolve().parents[2]


def test_serve_extra_alone_serves_without_torch(tiny_model_dir, tmp_path):
    env_dir = tmp_path / "device"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = str(env_dir / "bin" / "python")
    # Build from a copy of the sources: a non-editable install writes build/ beside them.
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".*", "runs", "build", "*.egg-info", "__pycache__"))
    install = [python, "-m", "pip", "install", "-q", "-c", str(ROOT / "constraints.txt"), f"{source}[serve]"]
    subprocess.run(install, check=True, capture_output=True, text=True)
    no_torch = subprocess.run([python, "-c", "import torch"], capture_output=True, text=True)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    for module in ("cv2", "tokenizers"):  # the preprocessors and CLIP's tokenizer are numpy / pure Python there
        absent = subprocess.run([python, "-c", f"import {module}"], capture_output=True, text=True)
        assert absent.returncode != 0 and f"No module named '{module}'" in absent.stderr

    distill = subprocess.run(
        [str(env_dir / "bin" / "refine-distill"), "--teacher", "builtin", "-o", str(tmp_path / "run")],
        capture_output=True,
        text=True,
    )
    assert distill.returncode == 2 and distill.stderr.startswith("error: this command needs the training")
    assert "pip install 'refine-control[train]'" in distill.stderr and "Traceback" not in distill.stderr

    # The on-device mode needs the browser runtime's npm packages, which a wheel does not carry: off, with a note.
    web = tmp_path / "model-web"
    server = start_server(tiny_model_dir, tmp_path / "srv", "--no-access-log", "--web", str(web), python=python)
    try:
        device = httpx.get(f"{server.url}/v1/models", timeout=60).json()["device"]
        assert device["available"] is False and "npm ci --prefix web" in device["note"], device
        assert httpx.get(f"{server.url}/device/", timeout=60).status_code == 404 and not web.exists()
        control = png_bytes(np.zeros((16, 16, 3), np.uint8))
        body = {"prompt": "a red square", "control_image": base64.b64encode(control).decode(), "seed": 1, "steps": 2}
        response = httpx.post(f"{server.url}/v1/generate", json=body, timeout=60)
        assert response.status_code == 200 and response.content.startswith(b"\x89PNG")
        photo = np.random.default_rng(3).integers(0, 256, (24, 32, 3), dtype=np.uint8)
        photo[6:18, 8:24] = (230, 40, 40)
        for name, tolerance in (("canny", 0), ("lineart", 1)):  # the server's maps are the training environment's
            body = {"image": base64.b64encode(png_bytes(photo)).decode(), "preprocessor": name}
            response = httpx.post(f"{server.url}/v1/preprocess", json=body, timeout=60)
            assert response.status_code == 200, response.text
            served = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))
            expected = (np.clip(get_preprocessor(name)(photo), 0, 1) * 255).round().astype(np.uint8)
            assert served.shape == expected.shape and np.abs(served.astype(int) - expected).max() <= tolerance, name
            assert served.any(), name
    finally:
        assert server.stop() == 0
    site = next((env_dir / "lib").glob("python3*/site-packages"))
    # The wheel is the runtime: the built-in teacher's weights stay in the checkout (pyproject's package-data).
    installed = site / "refine_control"
    assert (installed / "runtime").is_dir() and not list(installed.rglob("*.safetensors"))
    size_mb = sum(f.stat().st_size for f in site.rglob("*") if f.is_file()) / 1e6
    print(f"device install (refine-control[serve], site-packages): {size_mb:.0f} MB")
