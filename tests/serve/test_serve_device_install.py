"""The device install: a fresh virtual environment with only `pip install refine-control[serve]` has no torch, yet
serves an exported model; a training command there says which extra to install (exit 2). It installs the runtime's
wheels from the package index into a new venv (about a minute and a half), part of the default test run."""

import base64
import shutil
import subprocess
import venv
from pathlib import Path

import httpx
import numpy as np
from serve_helpers import png_bytes, start_server

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

    distill = subprocess.run(
        [str(env_dir / "bin" / "refine-distill"), "--teacher", "builtin", "-o", str(tmp_path / "run")],
        capture_output=True,
        text=True,
    )
    assert distill.returncode == 2 and distill.stderr.startswith("error: this command needs the training")
    assert "pip install 'refine-control[train]'" in distill.stderr and "Traceback" not in distill.stderr

    server = start_server(tiny_model_dir, tmp_path / "srv", "--no-access-log", python=python)
    try:
        control = png_bytes(np.zeros((16, 16, 3), np.uint8))
        body = {"prompt": "a red square", "control_image": base64.b64encode(control).decode(), "seed": 1, "steps": 2}
        response = httpx.post(f"{server.url}/v1/generate", json=body, timeout=60)
        assert response.status_code == 200 and response.content.startswith(b"\x89PNG")
    finally:
        assert server.stop() == 0
    site = next((env_dir / "lib").glob("python3*/site-packages"))
    size_mb = sum(f.stat().st_size for f in site.rglob("*") if f.is_file()) / 1e6
    print(f"device install (refine-control[serve], site-packages): {size_mb:.0f} MB")
