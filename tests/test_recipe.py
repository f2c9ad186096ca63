"""The fast recipe (`refine-distill` default): compact → few-step (→ tiny decoder) as stages of one run."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from refine_control.cli import main
from refine_control.errors import ConfigError
from refine_control.faults import FAULT_ENV
from refine_control.training.config import FEW_STEP_SAMPLING_STEPS, DistillConfig


def recipe_args(teacher, data, run, *extra):
    labelled, _ = data
    return [
        "--teacher", str(teacher), "--labelled", str(labelled), "-o", str(run), "--student", "compact-small",
        "--batch-size", "2", "--max-steps", "3", "--stage2-steps", "0", "--few-step-steps", "4",
        "--checkpoint-every", "2", "--log-every", "1", "--tiny-decoder-stage", "never", "-q", *extra,
    ]  # fmt: skip


def weights(run):
    return {part: load_file(next((run / "student" / part).glob("*.safetensors"))) for part in ("unet", "controlnet")}


def test_fast_recipe_runs_its_stages_and_the_run_holds_the_last_ones_student(tiny_pipeline_dir, tiny_data, tmp_path):
    run = tmp_path / "run"
    assert main(recipe_args(tiny_pipeline_dir, tiny_data, run)) == 0
    plan = json.loads((run / "recipe.json").read_text())
    assert plan["stages"] == ["compact", "few-step"] and plan["final"] == "few-step"
    decision = plan["tiny_decoder"]
    assert decision["policy"] == "never" and decision["added"] is False and decision["macs"]["vae_decode"] > 0
    # The final student is the few-step stage's, with its recommendation; the compact stage's is guided.
    final, few = weights(run), weights(run / "stages" / "few-step")
    assert all(torch.equal(final[p][k], few[p][k]) for p in final for k in final[p])
    sampling = json.loads((run / "student" / "sampling.json").read_text())
    assert sampling == {
        "steps": FEW_STEP_SAMPLING_STEPS,
        "guidance_scale": 3.0,
        "scheduler": "LCMScheduler",
        "guidance_range": [2.0, 5.0],
        "first_timestep": 999,
    }
    compact = json.loads((run / "stages" / "compact" / "student" / "sampling.json").read_text())
    assert compact["steps"] == 20 and compact["guidance_range"] is None
    # refine-eval and refine-export read the run like any other: teacher, resolution and a finished student.
    config = json.loads((run / "config.json").read_text())
    assert config["recipe"] == "fast" and config["resolved"]["resolution"] == 16
    assert set(json.loads((run / "metrics.json").read_text())["stages"]) == {"compact", "few-step"}
    # A finished recipe run cannot be chained with --from as a whole (its student is already few-step).
    assert main(["--from", str(run), "--few-step", "-o", str(tmp_path / "again"), "-q"]) == 2


def test_a_kill_during_the_few_step_stage_resumes_that_stage_bit_for_bit(tiny_pipeline_dir, tiny_data, tmp_path):
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    assert main(recipe_args(tiny_pipeline_dir, tiny_data, straight)) == 0
    # SIGKILL right after the few-step stage's step-2 checkpoint (refine_control/faults.py), in a real process.
    env = {**os.environ, FAULT_ENV: "checkpoint:few-step:2"}  # the same threads as this process: same sums
    argv = [sys.executable, "-m", "refine_control.cli", *recipe_args(tiny_pipeline_dir, tiny_data, crashed)]
    killed = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (crashed / "stages" / "compact" / "student" / "model_index.json").is_file()
    assert not (crashed / "student").exists()
    compact_file = next((crashed / "stages" / "compact" / "student" / "unet").glob("*.safetensors"))
    compact_mtime = compact_file.stat().st_mtime_ns
    # Without --resume the unfinished run is refused, never silently started over.
    assert main(recipe_args(tiny_pipeline_dir, tiny_data, crashed)) == 2
    assert main(recipe_args(tiny_pipeline_dir, tiny_data, crashed, "--resume")) == 0
    few = json.loads((crashed / "stages" / "few-step" / "metrics.json").read_text())
    assert few["steps"]["resumed_from"] == 2  # resumed from the checkpoint, not restarted
    assert compact_file.stat().st_mtime_ns == compact_mtime  # the finished stage was not trained again
    a, b = weights(straight), weights(crashed)
    assert all(torch.equal(a[p][k], b[p][k]) for p in a for k in a[p])


def test_recipe_options_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="--recipe"):
        DistillConfig(tmp_path, recipe="fastest")
    with pytest.raises(ConfigError, match="--tiny-decoder-stage"):
        DistillConfig(tmp_path, tiny_decoder_stage="maybe")
    with pytest.raises(ConfigError, match="--few-step-steps"):
        DistillConfig(tmp_path, few_step_steps=0)


def test_unknown_recipe_is_one_error_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--recipe", "fastest", "-o", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    assert "invalid choice: 'fastest' (choose from 'fast', 'guided')" in capsys.readouterr().err
