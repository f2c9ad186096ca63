"""FSDP2 with 2 CPU processes on gloo, through `accelerate launch --use_fsdp --fsdp_version 2` (accelerate 1.15 turns
FSDP on only for GPU backends; the trainer honours the flag on CPU, where torch's FSDP2 runs): the student is
sharded, checkpoints and the saved student hold whole tensors equal to a 1-process run's (2 processes × 1
micro-batch make the same steps as 1 process × 2 with `--grad-accum 2`), and a checkpoint written on 2 sharded
processes resumes on 1 and one written on 1 resumes sharded on 2, each continuing as the 1-process run did."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import write_image_folder

from refine_control.cli import main

LEARNING_RATE, WARMUP = 1e-3, 50
COMMON = (
    "--recipe", "guided", "--student", "compact-small", "--batch-size", "2", "--stage2-steps", "0", "--log-every",
    "1", "-q", "--max-steps", "4", "--checkpoint-every", "2", "--no-normalize-features", "--learning-rate",
    str(LEARNING_RATE), "--warmup-steps", str(WARMUP), "--ema-decay", "0.9",
)  # fmt: skip

# How close two runs' weights can be when only the kernels differ (the CPU's vector width, the number of
# processes). In the tiny student's width-8 blocks every GroupNorm group holds one channel, so a bias added right
# before the norm (a ResNet's conv1 bias, its time-embedding projection) has an exact gradient of zero: the norm
# subtracts the channel's own mean. What a run computes for it is rounding noise whose sign follows the summation
# order, and AdamW divides by the gradient's own RMS, so noise of any size moves an element by up to ±lr_t per step
# (|m̂/√v̂| ≤ 1.01 over the first steps): two runs may differ by 2 × Σ lr_t there. After 2 steps: 2.2e-5 measured
# here with AVX-512 and with AVX2 kernels, 2.1e-5 reported on an AMD EPYC, i.e. one step's lr (2e-5). That bound
# holds for every element of every weight. Elsewhere a gradient is far above its rounding, so the runs' steps
# agree to a small fraction of lr (measured ≤ 3.3e-6 between AVX-512, AVX2 and scalar kernels): held to half the
# first step's lr, all but 1 in 1000 elements (a gradient that cancels by chance behaves like the ones above). A
# sharding or reduce mistake moves nearly every element by about lr or more.
GRADIENT_FREE = re.compile(r"resnets\.\d+\.(conv1\.bias|time_emb_proj\.)")
ROUNDING_ATOL = LEARNING_RATE / WARMUP / 2


def _adam_bound(steps: int) -> float:
    """2 × Σ lr_t over the first `steps` steps (the warm-up's lr_t ≤ LEARNING_RATE × (t + 1) / WARMUP)."""
    return 2 * 1.01 * sum(LEARNING_RATE * (t + 1) / WARMUP for t in range(steps))


def _args(teacher: Path, data: Path, run: Path, *extra: str) -> list[str]:
    return ["--teacher", str(teacher), "--labelled", str(data), "--output-dir", str(run), *COMMON, *extra]


def _fsdp(
    argv: list[str], processes: int = 2, version: int = 2, mixed_precision: str = "no"
) -> subprocess.CompletedProcess:
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--use_fsdp", "--fsdp_version", str(version)]
    launch += ["--num_processes", str(processes), "--mixed_precision", mixed_precision, "-m", "refine_control.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([*launch, *argv], capture_output=True, text=True, timeout=600, env=env)


def _rows(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "sec_per_step"} for line in lines]


def _same_terms(a: list[dict], b: list[dict]) -> None:
    """Logged terms of two 1-process runs (with 2 processes each logs its own micro-batch): equal up to float
    rounding (1e-5 relative, as for DDP vs --grad-accum)."""
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        for term in ("task", "output", "feature"):
            assert rb[term] == pytest.approx(ra[term], rel=1e-5), (ra["step"], term)


def _close_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], steps: int) -> None:
    """Same names and shapes; values within the tolerances above after `steps` AdamW steps."""
    assert a.keys() == b.keys()
    beyond_rounding, checked = 0, 0
    for name in a:
        assert a[name].shape == b[name].shape, name
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=_adam_bound(steps), msg=name)
        if not GRADIENT_FREE.search(name):
            beyond_rounding += int((~torch.isclose(a[name], b[name], rtol=1e-4, atol=ROUNDING_ATOL)).sum())
            checked += a[name].numel()
    assert beyond_rounding <= checked // 1000, f"{beyond_rounding} of {checked} weights differ beyond rounding"


def _close_moments(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """AdamW's state: equal step counts; moments equal up to the rounding of a gradient, which follows the size of
    the summed terms, not of the result (a gradient that cancels to zero keeps their rounding): 1e-4 of the largest
    moment of its kind (measured ≤ 7e-7 of it). A gradient summed instead of averaged would be 2× off."""
    assert a.keys() == b.keys()
    for kind in ("exp_avg", "exp_avg_sq"):
        scale = max(float(v.abs().max()) for k, v in b.items() if k.endswith("." + kind))
        for name in (k for k in a if k.endswith("." + kind)):
            torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-4 * scale, msg=name)
    for name in (k for k in a if k.endswith(".step")):
        assert torch.equal(a[name], b[name]), name


def _same_student(a: Path, b: Path) -> None:
    for name in ("unet", "controlnet"):
        file = f"student/{name}/diffusion_pytorch_model.safetensors"
        _close_weights(load_file(a / file), load_file(b / file), steps=4)


def _resume_from_step_2(source: Path, target: Path) -> None:
    shutil.copytree(source, target)
    shutil.rmtree(target / "student")
    (target / "metrics.json").unlink()


def test_fsdp_checkpoints_hold_whole_tensors_and_resume_on_another_number_of_processes(tiny_pipeline_dir, tmp_path):
    data = write_image_folder(tmp_path / "f", 12)
    one, sharded = tmp_path / "one", tmp_path / "sharded"
    assert main(_args(tiny_pipeline_dir, data, one, "--grad-accum", "2")) == 0
    result = _fsdp(_args(tiny_pipeline_dir, data, sharded))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((sharded / "metrics.json").read_text())
    assert summary["world_size"] == 2 and summary["replicas_in_sync"] is None  # one sharded copy, nothing to compare

    # The step-2 checkpoint and the saved student: whole tensors, equal to the 1-process run's.
    step2 = {name: f"checkpoints/step-000002/{name}.safetensors" for name in ("trainable", "optimizer", "ema")}
    _close_weights(load_file(one / step2["trainable"]), load_file(sharded / step2["trainable"]), steps=2)
    _close_weights(load_file(one / step2["ema"]), load_file(sharded / step2["ema"]), steps=2)
    _close_moments(load_file(one / step2["optimizer"]), load_file(sharded / step2["optimizer"]))
    _same_student(one, sharded)

    # 2 sharded processes → 1 (with --grad-accum 2: the same global batch).
    moved = tmp_path / "moved"
    _resume_from_step_2(sharded, moved)
    assert main([*_args(tiny_pipeline_dir, data, moved, "--grad-accum", "2"), "--resume"]) == 0
    assert json.loads((moved / "metrics.json").read_text())["steps"]["resumed_from"] == 2
    _same_terms(_rows(one)[2:], _rows(moved)[2:])

    # bf16 under FSDP (its mixed precision casts the sharded weights for the forward pass): the same terms as the
    # fp32 sharded run up to bf16 rounding, and a whole float32 student.
    half = tmp_path / "half"
    result = _fsdp([*_args(tiny_pipeline_dir, data, half), "--mixed-precision", "bf16"], mixed_precision="bf16")
    assert result.returncode == 0, result.stderr[-3000:]
    for a, b in zip(_rows(sharded), _rows(half), strict=True):
        assert b["task"] == pytest.approx(a["task"], rel=2e-2) and b["output"] == pytest.approx(a["output"], rel=2e-2)
    saved = load_file(half / "student/unet/diffusion_pytorch_model.safetensors")
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in saved.values())

    # 1 process → 2 sharded: each process cuts its shard out of the whole tensors.
    spread = tmp_path / "spread"
    _resume_from_step_2(one, spread)
    result = _fsdp([*_args(tiny_pipeline_dir, data, spread), "--resume"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((spread / "metrics.json").read_text())["steps"]["resumed_from"] == 2
    _same_student(one, spread)


@pytest.mark.parametrize(
    ("extra", "version", "message"),
    [
        ((), 1, "error: FSDP version 1 is not supported"),
        (("--student", "controlnet-half"), 2, "error: student 'controlnet-half' is not supported under FSDP"),
    ],
)
def test_what_fsdp_cannot_shard_is_refused_with_one_error_line(tiny_pipeline_dir, tmp_path, extra, version, message):
    data = write_image_folder(tmp_path / "f", 4)
    result = _fsdp(_args(tiny_pipeline_dir, data, tmp_path / "run", *extra), processes=1, version=version)
    assert result.returncode != 0
    assert message in result.stderr and "hint:" in result.stderr
    # The launcher prints its own traceback for a failed child; the child prints only its error.
    child = [
        line for line in result.stderr.splitlines() if line.strip().startswith('File "') and "refine_control" in line
    ]
    assert not child
    assert not (tmp_path / "run" / "checkpoints").exists()
