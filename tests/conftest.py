import os

import pytest
from tiny_models import build_tiny_pipeline, write_image_folder

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Tests that import onnxruntime directly (before any refine_control module) must not start its telemetry either.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
# Two pytest-xdist workers share the cores: one OpenMP thread each, and idle threads sleep instead of spinning.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Tests train their own judges and never read or write a judge cache of the user's (a test that needs one sets its own).
os.environ.pop("REFINE_CONTROL_CACHE", None)
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_slow = pytest.mark.skip(reason="slow: opt in with --run-slow")
    for item in items:
        if "slow" in item.keywords and not config.getoption("--run-slow"):
            item.add_marker(skip_slow)


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory: pytest.TempPathFactory):
    """A tiny random teacher saved in the diffusers pipeline layout (what `--teacher DIR` expects)."""
    path = tmp_path_factory.mktemp("tiny") / "teacher"
    build_tiny_pipeline().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("data")
    return write_image_folder(base / "labelled", 12), write_image_folder(
        base / "unlabelled", 12, labelled=False, seed=1
    )


@pytest.fixture(scope="session")
def tiny_run_dir(tiny_pipeline_dir, tiny_data, tmp_path_factory: pytest.TempPathFactory):
    """A finished `refine-distill` run on the tiny teacher (compact-small student, a few steps)."""
    from refine_control.cli import main

    labelled, unlabelled = tiny_data
    run = tmp_path_factory.mktemp("runs") / "run"
    code = main(
        [
            "--recipe",
            "guided",
            "--teacher",
            str(tiny_pipeline_dir),
            "--labelled",
            str(labelled),
            "--unlabelled",
            str(unlabelled),
            "--student",
            "compact-small",
            "--output-dir",
            str(run),
            "--max-steps",
            "4",
            "--stage2-steps",
            "2",
            "--batch-size",
            "2",
            "-q",
        ]
    )
    assert code == 0
    return run


@pytest.fixture(scope="session")
def few_step_model(tiny_run_dir, tmp_path_factory: pytest.TempPathFactory):
    """(run, model): the tiny run made a 2-step, guidance-distilled student (sampling from t = 759) with a tiny VAE,
    exported with the
    default (dynamo) exporter and --int8. Under pytest-xdist the workers share one, made under a file lock (the
    manifest is written last, so a present manifest means a complete model dir)."""
    import fcntl

    from refine_control.cli import main as distill
    from refine_control.export.cli import main as export

    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "few-step"
    root.mkdir(exist_ok=True)
    fs, tiny, model = root / "fs", root / "fs-tiny", root / "model"
    with open(root.parent / "few-step.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (model / "manifest.json").is_file():
            common = ["--batch-size", "2", "--max-steps", "3", "--overwrite", "-q"]
            assert distill(["--from", str(tiny_run_dir), "--few-step", "-o", str(fs), "--sampling-steps", "2",
                            "--sampling-first-timestep", "759", *common]) == 0  # fmt: skip
            assert distill(["--from", str(fs), "--tiny-decoder", "-o", str(tiny), *common]) == 0
            args = ["--int8", "--int8-anyway", "--calibration-samples", "2", "--parity-samples", "2", "--threads", "1"]
            args.append("-q")
            assert export([str(tiny), "-o", str(model), "--overwrite", *args]) == 0
    return tiny, model
