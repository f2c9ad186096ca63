"""Fixtures of the browser-runtime tests: the tiny distilled run exported with `--web` (TorchScript exporter, INT8
written so the folder carries both precisions), and the paths of the tools they need."""

import contextlib
import io
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "serve"))  # cdp.py, the DevTools client

REPO = Path(__file__).resolve().parents[2]
WEB = REPO / "web"
NODE_MODULES_HINT = "needs web/node_modules: npm ci --prefix web"


def node_modules_present() -> bool:
    return (WEB / "node_modules" / "onnxruntime-web" / "dist" / "ort.min.mjs").is_file()


@pytest.fixture(scope="session")
def web_export(tiny_run_dir, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """{"model": model dir, "web": web folder, "code": exit code, "stdout": what refine-export printed}."""
    if not node_modules_present():
        pytest.skip(NODE_MODULES_HINT)
    import torch

    from refine_control.export.cli import main

    base = tmp_path_factory.mktemp("web-export")
    model, web = base / "model", base / "model-web"
    args = ["--exporter", "torchscript", "--int8", "--int8-anyway", "--int8-op-types", "Conv,MatMul"]
    args += ["--calibration-samples", "2", "--parity-samples", "1", "--threads", "1", "--web", "-q"]
    out = io.StringIO()
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # see tests/export/conftest.py: one thread on a busy 2-core machine
    try:
        with contextlib.redirect_stdout(out):
            code = main([str(tiny_run_dir), "--output-dir", str(model), *args])
    finally:
        torch.set_num_threads(previous)
    return {"model": model, "web": web, "code": code, "stdout": out.getvalue()}


@pytest.fixture
def web_copy(web_export: dict, tmp_path: Path) -> Path:
    """A private copy of the web folder, for tests that damage it."""
    assert web_export["code"] == 0, web_export["stdout"]
    return Path(shutil.copytree(web_export["web"], tmp_path / "web"))


@pytest.fixture(scope="session")
def web_few_step(tiny_run_dir, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The tiny run's few-step (LCM, guidance-embedded, 2-step) student exported with `--web`: the sampling path
    with one batch-1 pass per step and fresh noise between steps."""
    if not node_modules_present():
        pytest.skip(NODE_MODULES_HINT)
    import torch

    from refine_control.cli import main as distill
    from refine_control.export.cli import main as export

    base = tmp_path_factory.mktemp("web-few-step")
    few, model, web = base / "fs", base / "model", base / "site"
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        common = ["--batch-size", "2", "--max-steps", "3", "-q"]
        assert (
            distill(["--from", str(tiny_run_dir), "--few-step", "-o", str(few), "--sampling-steps", "2", *common]) == 0
        )
        args = ["--exporter", "torchscript", "--parity-samples", "1", "--threads", "1", "--web", str(web), "-q"]
        with contextlib.redirect_stdout(io.StringIO()):
            code = export([str(few), "-o", str(model), *args])
    finally:
        torch.set_num_threads(previous)
    assert code == 0
    return {"model": model, "web": web}
