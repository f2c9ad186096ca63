"""The SD1.5 rehearsal (benchmarks/sd15_rehearsal.py) at reduced size: every console command it runs succeeds on a
teacher of SD1.5's block structure (channels ÷ 10, 64 px), from a diffusers dir and from single-file checkpoints,
and its result file holds what the README table renders."""

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.sd15_rehearsal import main, sd15_configs  # noqa: E402
from refine_control.training.config import FEW_STEP_SAMPLING_STEPS  # noqa: E402


def test_the_reduced_configs_keep_sd15s_structure_and_only_narrow_it():
    full, reduced = sd15_configs(False), sd15_configs(True)
    assert full["unet"] == {"cross_attention_dim": 768, "sample_size": 64}  # diffusers' defaults are SD1.5's
    assert reduced["unet"]["block_out_channels"] == (32, 64, 128, 128)
    assert reduced["text"]["max_position_embeddings"] == full["text"]["max_position_embeddings"] == 77
    assert reduced["vae"]["down_block_types"] == full["vae"]["down_block_types"]  # 4 levels: factor 8
    assert reduced["unet"]["cross_attention_dim"] == reduced["text"]["hidden_size"] == 64


@pytest.mark.slow
def test_the_rehearsal_runs_every_command_end_to_end_at_reduced_size(tmp_path):
    """refine-distill (diffusers dir, single files), the few-step stage, refine-export --int8 with parity and
    refine-serve with one image through the REST API, each as the installed console command. Minutes on 2 cores."""
    results = tmp_path / "results"
    argv = ["--size", "64", "--reduced", "--single-file", "--skip-bf16", "--workdir", str(tmp_path / "work"),
            "--steps", "2", "--few-step-steps", "1", "--calibration-samples", "1", "--repeats", "1",
            "--margin", "1", "--results-root", str(results), "--results-name", "sd15/test"]  # fmt: skip
    assert main(argv) == 0
    record = json.loads((results / "sd15" / "test.json").read_text())
    assert "random weights" in record["notes"]
    m = record["metrics"]
    for name in ("compact_fp32", "compact_single_file", "few_step"):
        stage = m["stages"][name]
        assert stage["exit_code"] == 0 and stage["peak_rss_gib"] > 0.1, stage
        assert stage["memory_estimate_gib"] > 0 and stage["sec_per_step_median"] > 0
    assert len(m["stages"]["compact_fp32"]["sec_per_step"]) == 2 and len(m["stages"]["few_step"]["sec_per_step"]) == 1
    assert {"model.safetensors", "cn.safetensors"} <= set(m["single_files_mib"])
    assert m["export"]["exit_code"] == 0 and m["export"]["parity"]["passed"] is True
    assert "denoiser.onnx" in m["export"]["files_mib"]
    serve = m["serve"]
    assert serve["http_status"] == 200 and serve["image_size"] == [64, 64] and serve["exit_code"] == 0, serve
    assert (tmp_path / "work" / "served.png").is_file()
    images = m["image_time"]
    assert images["resolution"] == 64 and images["steps"] == FEW_STEP_SAMPLING_STEPS  # the student's recommendation
    for decoder in ("sd_vae", "tiny_random"):
        assert images[decoder]["decode_s"] > 0 and images[decoder]["image_s"] > 0
