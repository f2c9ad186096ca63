"""Fixtures of the server tests: a real tiny exported model, and app clients over it or over a stand-in engine."""

import contextlib
import fcntl
import os

import pytest
from serve_client import make_client
from serve_fakes import FakeEngine


@pytest.fixture(scope="session")
def tiny_model_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """`refine-export` of the tiny distilled run (TorchScript exporter: the fastest here; parity is checked).

    Under pytest-xdist the workers share one export: the first one makes it under a file lock (its manifest is
    written last, so a present manifest means a complete dir); the others reuse it without distilling at all.
    """
    from refine_control.export.cli import main

    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    out = root / "serve-tiny-model"
    with _lock(root / "serve-tiny-model.lock"):
        if not (out / "manifest.json").is_file():
            run = request.getfixturevalue("tiny_run_dir")
            args = ["--output-dir", str(out), "--exporter", "torchscript", "--parity-samples", "1", "--steps", "2"]
            assert main([str(run), *args, "--overwrite", "-q"]) == 0
    return out


@contextlib.contextmanager
def _lock(path):
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.fixture
def fake_engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def fake_client(fake_engine):
    with make_client(fake_engine) as client:
        yield client


@pytest.fixture(scope="session")
def real_client(tiny_model_dir):
    """The app over the real exported tiny model, loaded through the lifespan (no stand-in anywhere)."""
    with make_client(model_dir=tiny_model_dir, warmup=True) as client:
        yield client
