"""The few-step stage (`refine-distill --from RUN --few-step`) on the tiny teacher."""

import json
import shutil

import pytest
import torch
from diffusers import LCMScheduler, StableDiffusionControlNetPipeline
from safetensors.torch import load_file

from refine_control.cli import main


def few_step_args(run, out, *extra):
    return ["--from", str(run), "--few-step", "-o", str(out), "--batch-size", "2", "--log-every", "1", "-q", *extra]


def rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_few_step_student_samples_without_guidance_pairs(tiny_run_dir, tmp_path):
    out = tmp_path / "fs"
    assert main(few_step_args(tiny_run_dir, out, "--max-steps", "3", "--sampling-steps", "2")) == 0
    config = json.loads((out / "config.json").read_text())
    source = json.loads((tiny_run_dir / "config.json").read_text())
    assert config["teacher"] == source["teacher"] and config["student"] == source["student"]  # inherited
    assert config["learning_rate"] == 2e-4 and config["max_steps"] == 3
    assert [set(r) >= {"consistency"} for r in rows(out)] == [True] * 3
    assert json.loads((out / "student" / "sampling.json").read_text()) == {
        "steps": 2,
        "guidance_scale": 3.0,
        "scheduler": "LCMScheduler",
        "guidance_range": [2.0, 5.0],
        "first_timestep": 999,  # the tiny teacher's scaled-linear schedule has √ᾱ 0.068 at 999: LCM's own start
    }
    pipe = StableDiffusionControlNetPipeline.from_pretrained(out / "student")
    assert isinstance(pipe.scheduler, LCMScheduler) and pipe.unet.config.time_cond_proj_dim == 256
    calls = []
    pipe.unet.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    image = pipe("a red square", image=torch.rand(1, 3, 16, 16), num_inference_steps=2, guidance_scale=3.0,
                 height=16, width=16, output_type="np").images  # fmt: skip
    assert image.shape == (1, 16, 16, 3) and calls == [1, 1]  # two steps, batch 1: no unconditional pass
    # The whole student trained: UNet and ControlNet both moved away from the run they started from.
    for part in ("unet", "controlnet"):
        before = load_file(next((tiny_run_dir / "student" / part).glob("*.safetensors")))
        after = load_file(next((out / "student" / part).glob("*.safetensors")))
        assert any(not torch.equal(before[k], after[k]) for k in before), part


def test_few_step_resumes_bit_for_bit(tiny_run_dir, tmp_path):
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    extra = ("--max-steps", "4", "--checkpoint-every", "2")
    assert main(few_step_args(tiny_run_dir, straight, *extra)) == 0
    shutil.copytree(straight, crashed)
    shutil.rmtree(crashed / "student")
    (crashed / "metrics.json").unlink()
    shutil.rmtree(crashed / "checkpoints" / "step-000004", ignore_errors=True)
    assert main(few_step_args(tiny_run_dir, crashed, *extra, "--resume")) == 0
    # It resumed from the step-2 checkpoint (a restart from step 0 would give the same weights too).
    assert json.loads((crashed / "metrics.json").read_text())["steps"]["resumed_from"] == 2
    a = load_file(next((straight / "student" / "unet").glob("*.safetensors")))
    b = load_file(next((crashed / "student" / "unet").glob("*.safetensors")))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["consistency"] for r in rows(straight)] == [r["consistency"] for r in rows(crashed)]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ((), "`--from RUN` goes with one of `--few-step` or `--tiny-decoder`"),
        (("--from", "{missing}", "--few-step"), "does not exist or is not a directory"),
        (("--from", "{run}", "--few-step", "--sampling-steps", "0"), "`--sampling-steps` must be in 1..50"),
        (("--from", "{run}", "--few-step", "--sampling-steps", "51"), "`--sampling-steps` must be in 1..50"),
        (("--from", "{run}", "--few-step", "--guidance-range=0.5,2"), "`--guidance-range` must be 1 <= MIN"),
        (("--from", "{run}", "--few-step", "--ema-decay", "0.9"), "keeps its own target network"),
    ],
)
def test_few_step_bad_input_is_one_line_and_exit_2(tiny_run_dir, tmp_path, capsys, extra, message):
    args = [a.format(run=tiny_run_dir, missing=tmp_path / "nope") for a in extra]
    if not extra:
        args = ["--few-step"]
    assert main([*args, "-o", str(tmp_path / "out"), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_a_few_step_run_is_not_a_starting_point(tiny_run_dir, tmp_path, capsys):
    out = tmp_path / "fs"
    assert main(few_step_args(tiny_run_dir, out, "--max-steps", "1")) == 0
    assert main(few_step_args(out, tmp_path / "again", "--max-steps", "1")) == 2
    assert "already a few-step student" in capsys.readouterr().err


def test_tiny_decoder_replaces_the_vae_and_keeps_the_sampling_recommendation(tiny_run_dir, tmp_path):
    from diffusers import AutoencoderTiny

    fs, tiny = tmp_path / "fs", tmp_path / "tiny"
    assert main(few_step_args(tiny_run_dir, fs, "--max-steps", "1", "--sampling-steps", "3")) == 0
    assert (
        main(
            [
                "--from",
                str(fs),
                "--tiny-decoder",
                "-o",
                str(tiny),
                "--max-steps",
                "3",
                "--tiny-decoder-width",
                "4",
                "-q",
            ]
        )
        == 0
    )
    pipe = StableDiffusionControlNetPipeline.from_pretrained(tiny / "student")
    assert isinstance(pipe.vae, AutoencoderTiny) and isinstance(pipe.scheduler, LCMScheduler)
    source = StableDiffusionControlNetPipeline.from_pretrained(fs / "student")
    assert pipe.vae.config.scaling_factor == source.vae.config.scaling_factor  # the same latent space
    assert pipe.vae_scale_factor == source.vae_scale_factor
    assert json.loads((tiny / "student" / "sampling.json").read_text())["steps"] == 3
    unet_a = load_file(next((fs / "student" / "unet").glob("*.safetensors")))
    unet_b = load_file(next((tiny / "student" / "unet").glob("*.safetensors")))
    assert all(torch.equal(unet_a[k], unet_b[k]) for k in unet_a)  # only the VAE changed
    metrics = json.loads((tiny / "metrics.json").read_text())
    assert metrics["tiny_vae_params"] < metrics["teacher_vae_params"] and "decoder_psnr_vs_teacher_db" in metrics
    image = pipe("a red square", image=torch.rand(1, 3, 16, 16), num_inference_steps=2, height=16, width=16,
                 output_type="np").images  # fmt: skip
    assert image.shape == (1, 16, 16, 3)
