"""One real export of the tiny distilled student, shared by every export test (and every xdist worker).

The export uses the TorchScript exporter (about 2 s for the tiny denoiser where dynamo takes 40 s on a busy
2-core machine; test_export_dynamo.py covers the default dynamo path), INT8, FP16 and ORT format, one thread
(on a busy 2-core machine a second OpenMP thread made PyTorch ~100× slower), and small calibration / parity sets.
"""

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

EXPORT_ARGS = [
    "--exporter",
    "torchscript",
    "--int8",
    "--int8-anyway",  # the tiny graph is overhead-bound: INT8 is rarely faster, and these tests need the file
    "--fp16",
    "--ort",
    "--calibration-samples",
    "2",
    "--parity-samples",
    "2",
    "--steps",
    "4",
    "--threads",
    "1",
    "-q",
]


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """PyTorch on one intra-op thread: on a busy 2-core machine two OpenMP threads made the tiny student's forward
    ~100× slower (1.1 s instead of 11 ms) and the tiny distillation run 146 s instead of 11 s."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _one_torch_thread_per_export_test() -> Iterator[None]:
    with one_torch_thread():
        yield


@pytest.fixture(scope="session")
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """{"model": MODEL dir, "run": the run dir or None, "code": exit code, "stdout": printed summary}.

    Built once: under xdist the first worker exports into the shared base temp dir while the others wait.
    """
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    model, record = shared / "export-model" / "model", shared / "export-model" / "result.json"
    with FileLock(str(shared / "export-model.lock")):
        if record.is_file():
            return {**json.loads(record.read_text()), "model": model}
        import io

        from refine_control.export.cli import main

        with one_torch_thread():
            run = request.getfixturevalue("tiny_run_dir")  # built here if no other test needed it yet
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                code = main([str(run), "--output-dir", str(model), *EXPORT_ARGS])
        result = {"code": code, "stdout": out.getvalue(), "run": str(run)}
        record.write_text(json.dumps(result))
    return {**result, "model": model}


@pytest.fixture
def model_copy(exported: dict, tmp_path: Path) -> Path:
    """A private copy of the exported model dir, for tests that damage it."""
    assert exported["code"] == 0, exported["stdout"]
    return Path(shutil.copytree(exported["model"], tmp_path / "model"))
