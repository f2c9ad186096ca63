"""A pretrained tiny decoder (a diffusers `AutoencoderTiny` dir, e.g. TAESD) in training and in export:
`refine-distill --from RUN --tiny-decoder-from DIR` and `refine-export RUN --vae-decoder DIR`.

The tiny random `AutoencoderTiny` here has TAESD's convention, scaling factor 1.0 (it decodes the UNet's latents as
they are), while the tiny teacher's `AutoencoderKL` has 0.18215: a path that applied the teacher's factor to it
would feed it latents 5.5× too large, which the scaling tests below tell apart.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, AutoencoderTiny, StableDiffusionControlNetPipeline
from safetensors.torch import load_file
from tiny_models import build_tiny_autoencoder_tiny

from refine_control.cli import main as distill
from refine_control.export.cli import main as export
from refine_control.runtime import OnnxControlNetPipeline
from refine_control.runtime.session import ort_session

EXPORT_ARGS = ["--exporter", "torchscript", "--parity-samples", "1", "--steps", "2", "--threads", "1", "-q"]


@pytest.fixture(scope="module")
def taesd_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("taesd") / "taesd"
    build_tiny_autoencoder_tiny().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def bad_decoders(tmp_path_factory, tiny_pipeline_dir):
    """(DIR, message) pairs: each must be refused with one error line, exit 2, nothing written."""
    base = tmp_path_factory.mktemp("bad-decoders")
    wide = base / "latent16"
    build_tiny_autoencoder_tiny(latent_channels=16).save_pretrained(wide)
    (base / "empty").mkdir()
    return [
        (tiny_pipeline_dir / "vae", "is not an AutoencoderTiny (its config.json names AutoencoderKL)"),
        (wide, "the decoder's latent channels (16) do not match the teacher VAE's (4)"),
        (base / "empty", "is not a diffusers model directory (no config.json)"),
    ]


@pytest.fixture(scope="module")
def pretrained_run(tiny_run_dir, taesd_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrained") / "run"
    assert distill(["--from", str(tiny_run_dir), "--tiny-decoder-from", str(taesd_dir), "-o", str(out), "-q"]) == 0
    return out


def _decode_uint8(vae, latents: torch.Tensor) -> np.ndarray:
    """diffusers' VAE decode + postprocess, as the runtime's `decode` does it."""
    with torch.no_grad():
        image = vae.decode(latents).sample[0]
    return ((image / 2 + 0.5).clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def test_distill_tiny_decoder_from_puts_the_pretrained_decoder_in_the_student(tiny_run_dir, taesd_dir, pretrained_run):
    out = pretrained_run
    pipe = StableDiffusionControlNetPipeline.from_pretrained(out / "student")
    assert isinstance(pipe.vae, AutoencoderTiny) and pipe.vae.config.scaling_factor == 1.0
    theirs = load_file(taesd_dir / "diffusion_pytorch_model.safetensors")
    ours = load_file(out / "student" / "vae" / "diffusion_pytorch_model.safetensors")
    assert theirs.keys() == ours.keys() and all(torch.equal(theirs[k], ours[k]) for k in theirs)  # not trained
    unet_a = load_file(next((tiny_run_dir / "student" / "unet").glob("*.safetensors")))
    unet_b = load_file(next((out / "student" / "unet").glob("*.safetensors")))
    assert all(torch.equal(unet_a[k], unet_b[k]) for k in unet_a)  # only the decoder changed
    config = json.loads((out / "config.json").read_text())
    assert config["tiny_decoder"] and config["tiny_decoder_from"] == str(taesd_dir)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["scaling_factor"] == 1.0 and metrics["other_scaling_factor"] == pytest.approx(0.18215)
    assert metrics["pretrained_from"] == str(taesd_dir) and metrics["tiny_vae_params"] < metrics["teacher_vae_params"]


def test_distill_scores_the_pretrained_decoder_on_the_unet_latents_as_they_are(
    tiny_run_dir, taesd_dir, pretrained_run
):
    """The recorded PSNR is that of TAESD decoding the UNet's latents unchanged (its factor 1.0); dividing them by
    the teacher's factor first would give the other recorded number, which differs."""
    from refine_control.data.folders import load_image
    from refine_control.training.tiny_decoder import psnr_db

    out = pretrained_run
    metrics = json.loads((out / "metrics.json").read_text())
    teacher_vae = AutoencoderKL.from_pretrained(tiny_run_dir / "student" / "vae").eval()
    taesd = AutoencoderTiny.from_pretrained(taesd_dir).eval()
    labelled = json.loads((out / "config.json").read_text())["labelled"]
    rows = [json.loads(line) for line in (Path(labelled) / "metadata.jsonl").read_text().splitlines() if line]
    images = np.stack([load_image(Path(labelled) / r["file_name"], 16) for r in rows])
    with torch.no_grad():
        pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
        raw = teacher_vae.encode(pixels).latent_dist.mode()
        reference = teacher_vae.decode(raw).sample
        unet_latents = raw * teacher_vae.config.scaling_factor
        right, wrong = taesd.decode(unet_latents).sample, taesd.decode(raw).sample
    held = np.arange(len(images)) % 10 == 9
    assert metrics["held_out_images"] == int(held.sum())
    assert metrics["decoder_psnr_vs_teacher_db"] == pytest.approx(psnr_db(right[held], reference[held]), abs=1e-3)
    other = metrics["decoder_psnr_vs_teacher_other_scaling_db"]
    assert other == pytest.approx(psnr_db(wrong[held], reference[held]), abs=1e-3)
    assert abs(other - metrics["decoder_psnr_vs_teacher_db"]) > 1e-3


def test_export_vae_decoder_graph_equals_the_pytorch_autoencoder_tiny(tiny_run_dir, taesd_dir, tmp_path):
    model = tmp_path / "model"
    assert export([str(tiny_run_dir), "-o", str(model), "--vae-decoder", str(taesd_dir), *EXPORT_ARGS]) == 0
    manifest = json.loads((model / "manifest.json").read_text())
    assert manifest["pipeline"]["vae_scaling_factor"] == 1.0  # TAESD's own factor, not the teacher's 0.18215
    assert manifest["export"]["vae_decoder"] == {
        "class": "AutoencoderTiny",
        "from": str(taesd_dir),
        "scaling_factor": 1.0,
    }
    parity = json.loads((model / "parity.json").read_text())
    assert parity["passed"]
    taesd = AutoencoderTiny.from_pretrained(taesd_dir).eval()
    session = ort_session(model / "vae_decoder.onnx", threads=1)
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))  # another batch than traced
    with torch.no_grad():
        expected = taesd.decode(latents).sample.numpy()
    got = session.run(None, {session.get_inputs()[0].name: latents.numpy()})[0]
    assert got.shape == expected.shape == (2, 3, 16, 16)
    assert np.abs(got - expected).max() <= 1e-4

    # The runtime divides the UNet's latents by TAESD's factor (1.0), not by the teacher's: its image is TAESD's
    # decode of the latents as they are, and clearly not the decode of latents / 0.18215.
    pipe = OnnxControlNetPipeline(model, num_threads=1)
    unet_latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    image = pipe.decode(unet_latents.numpy()).astype(int)
    assert np.abs(image - _decode_uint8(taesd, unet_latents)).max() <= 1
    assert np.abs(image - _decode_uint8(taesd, unet_latents / 0.18215)).mean() > 5


def test_export_without_vae_decoder_keeps_the_students_decoder(tiny_run_dir, tmp_path):
    """The control: the same run exported as it is carries the teacher's AutoencoderKL and its 0.18215."""
    model = tmp_path / "model"
    assert export([str(tiny_run_dir), "-o", str(model), *EXPORT_ARGS]) == 0
    manifest = json.loads((model / "manifest.json").read_text())
    assert manifest["pipeline"]["vae_scaling_factor"] == pytest.approx(0.18215)
    assert manifest["export"]["vae_decoder"]["class"] == "AutoencoderKL"


def test_bad_decoder_dir_is_one_error_line_exit_2_nothing_written(tiny_run_dir, bad_decoders, tmp_path, capsys):
    for i, (decoder, message) in enumerate(bad_decoders):
        run, model = tmp_path / f"run{i}", tmp_path / f"model{i}"
        assert distill(["--from", str(tiny_run_dir), "--tiny-decoder-from", str(decoder), "-o", str(run), "-q"]) == 2
        assert export([str(tiny_run_dir), "-o", str(model), "--vae-decoder", str(decoder), *EXPORT_ARGS]) == 2
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert [line.split(":")[0] for line in lines] == ["error", "hint", "error", "hint"], err
        assert lines[0] == lines[2] and message in lines[0] and "Traceback" not in err
        assert not run.exists() and not model.exists()
        assert not list(tmp_path.glob(f".model{i}*")) and not list(tmp_path.glob(f".run{i}*"))


def test_tiny_decoder_from_needs_from(taesd_dir, tmp_path, capsys):
    assert distill(["--tiny-decoder-from", str(taesd_dir), "-o", str(tmp_path / "out"), "-q"]) == 2
    assert "`--from RUN` goes with one of" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_dry_run_counts_no_training_steps_for_a_pretrained_decoder(tiny_run_dir, taesd_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert (
        distill(["--from", str(tiny_run_dir), "--tiny-decoder-from", str(taesd_dir), "-o", str(out), "--dry-run"]) == 0
    )
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.strip().startswith("tiny-decoder")]
    assert len(rows) == 1 and rows[0][1] == "0" and not out.exists()


def test_taesd_geometry_fits_the_sd15_vae_and_others_do_not(tmp_path):
    """diffusers' `AutoencoderTiny()` defaults are TAESD's published SD1.x geometry (4 latents, 3 upsamplings):
    random weights of that shape fit the SD1.5 VAE config; a 16-latent decoder (TAESD3 / TAEF1 shape) and one
    with 4 pixels per latent do not."""
    from sd15_configs import SD15_VAE

    from refine_control.errors import ConfigError
    from refine_control.models.tiny_decoder_dir import load_tiny_decoder

    AutoencoderTiny().save_pretrained(tmp_path / "taesd")
    vae = load_tiny_decoder(tmp_path / "taesd", SD15_VAE)
    assert vae.config.scaling_factor == 1.0 and not any(p.requires_grad for p in vae.parameters())
    wrong = {
        "latent16": (AutoencoderTiny(latent_channels=16), "latent channels (16) do not match the teacher VAE's (4)"),
        "x4": (
            AutoencoderTiny(
                encoder_block_out_channels=(8, 8, 8),
                decoder_block_out_channels=(8, 8, 8),
                num_encoder_blocks=(1, 1, 1),
                num_decoder_blocks=(1, 1, 1),
            ),
            "pixels per latent (4) do not match the teacher VAE's (8)",
        ),
    }
    for name, (model, message) in wrong.items():
        model.save_pretrained(tmp_path / name)
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_tiny_decoder(tmp_path / name, SD15_VAE)
