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
def web_export(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """{"model": model dir, "web": web folder, "code": exit code, "stdout": what refine-export printed}.

    Built once: under pytest-xdist the first worker exports into the shared base temp dir while the others wait."""
    if not node_modules_present():
        pytest.skip(NODE_MODULES_HINT)
    import json
    import os

    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    shared = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "web-export"
    shared.mkdir(exist_ok=True)
    model, web, record = shared / "model", shared / "model-web", shared / "result.json"
    with FileLock(str(shared.parent / "web-export.lock")):
        if not record.is_file():
            import torch

            from refine_control.export.cli import main

            run = request.getfixturevalue("tiny_run_dir")
            # Every Conv and MatMul in INT8 (no per-node selection: fast), kept even when the tiny random model's INT8
            # images miss the export's parity bar against PyTorch (tests/export owns that bar; these tests compare
            # the browser with the Python runtime on the very same graphs).
            args = ["--exporter", "torchscript", "--int8", "--int8-anyway", "--int8-op-types", "Conv,MatMul"]
            args += ["--allow-degraded", "--calibration-samples", "2", "--parity-samples", "1", "--threads", "1"]
            args += ["--web", "-q"]
            out = io.StringIO()
            previous = torch.get_num_threads()
            torch.set_num_threads(1)  # see tests/export/conftest.py: one thread on a busy 2-core machine
            try:
                with contextlib.redirect_stdout(out):
                    code = main([str(run), "--output-dir", str(model), *args])
            finally:
                torch.set_num_threads(previous)
            record.write_text(json.dumps({"code": code, "stdout": out.getvalue()}))
    return {**json.loads(record.read_text()), "model": model, "web": web}


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
            distill(["--from", str(tiny_run_dir), "--few-step", "-o", str(few), "--sampling-steps", "2",
                     "--sampling-first-timestep", "759", *common]) == 0
        )  # fmt: skip
        args = ["--exporter", "torchscript", "--parity-samples", "1", "--threads", "1", "--web", str(web), "-q"]
        with contextlib.redirect_stdout(io.StringIO()):
            code = export([str(few), "-o", str(model), *args])
    finally:
        torch.set_num_threads(previous)
    assert code == 0
    return {"model": model, "web": web}
