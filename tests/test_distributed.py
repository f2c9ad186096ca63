"""FSDP on a CUDA machine (accelerate 1.15 turns FSDP on only for GPU-type backends, so it cannot run on CPU/gloo
here even though torch's FSDP itself does). Until checkpoints gather sharded parameters, an FSDP launch must be
refused with one error line, never save a checkpoint that holds one process's shard."""

import os
import subprocess
import sys

import pytest
from tiny_models import write_image_folder


@pytest.mark.gpu
def test_an_fsdp_launch_is_refused_until_sharded_checkpoints_exist(tiny_pipeline_dir, tmp_path):
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 CUDA devices")
    data = write_image_folder(tmp_path / "f", 8)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--use_fsdp", "--num_processes", "2"]
    args = ["--teacher", str(tiny_pipeline_dir), "--labelled", str(data), "-o", str(tmp_path / "run"), "-q"]
    result = subprocess.run(
        [*launch, "-m", "refine_control.cli", *args, "--max-steps", "2", "--batch-size", "2"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode != 0
    assert "error: FSDP is not supported yet" in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()
