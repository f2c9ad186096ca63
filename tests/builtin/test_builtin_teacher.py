import json
import os

import pytest
import torch
from safetensors import safe_open

from refine_control.builtin import BUILTIN_TEACHER_DIR, builtin_teacher_dir
from refine_control.builtin.architecture import build_controlnet, build_text_encoder, build_unet, build_vae
from refine_control.builtin.cli import main as teacher_main
from refine_control.builtin.teacher_recipe import TeacherRecipe, train_teacher
from refine_control.builtin.tokenizer import build_clip_tokenizer
from refine_control.errors import ConfigError

HAVE_WEIGHTS = (BUILTIN_TEACHER_DIR / "model_index.json").is_file()
needs_weights = pytest.mark.skipif(
    not HAVE_WEIGHTS, reason="the builtin teacher is not trained yet (run `refine-teacher --output-dir ...`)"
)


def test_recipe_follows_diffusers_conventions():
    vae, unet = build_vae(), build_unet()
    controlnet = build_controlnet(unet)
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    assert scale == 4 and unet.config.sample_size * scale == 64
    # One conditioning-embedding entry per halving plus one: the control image is downsampled by the VAE factor.
    assert len(controlnet.config.conditioning_embedding_out_channels) == scale.bit_length()
    assert "CrossAttn" not in unet.config.down_block_types[0] and "CrossAttn" not in unet.config.up_block_types[-1]
    assert build_text_encoder(len(build_clip_tokenizer())).config.vocab_size == 49408


def test_missing_weights_raise_with_the_fix(tmp_path, monkeypatch):
    import refine_control.builtin as builtin

    monkeypatch.setattr(builtin, "BUILTIN_TEACHER_DIR", tmp_path / "teacher")
    with pytest.raises(ConfigError, match="missing") as info:
        builtin.builtin_teacher_dir()
    assert "refine-teacher" in info.value.hint


def test_recipe_rejects_bad_values():
    with pytest.raises(ConfigError, match="--vae-steps"):
        TeacherRecipe(vae_steps=0)
    with pytest.raises(ConfigError, match="--pool-size"):
        TeacherRecipe(pool_size=4, batch_size=8)


def test_cli_bad_input_exits_2(tmp_path, capsys):
    assert teacher_main(["--output-dir", str(tmp_path / "t"), "--unet-steps", "0", "-q"]) == 2
    assert capsys.readouterr().err.startswith("error: `--unet-steps` must be >= 1")


def test_recipe_end_to_end_in_miniature(tmp_path):
    from diffusers import StableDiffusionControlNetPipeline

    recipe = TeacherRecipe(batch_size=2, pool_size=4, vae_steps=1, unet_steps=1, controlnet_steps=1, warmup_steps=1)
    info = train_teacher(recipe, tmp_path / "teacher", work_dir=tmp_path / "work")
    assert set(info) >= {"vae", "unet", "controlnet", "total", "parameters"}
    with safe_open(tmp_path / "teacher" / "unet" / "diffusion_pytorch_model.safetensors", "pt") as f:
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.float16
    pipeline = StableDiffusionControlNetPipeline.from_pretrained(tmp_path / "teacher", dtype=torch.float32)
    assert pipeline.unet.dtype == torch.float32 and pipeline.vae_scale_factor == 4
    # A rerun with the same work dir reuses the finished phases.
    again = train_teacher(recipe, tmp_path / "again", work_dir=tmp_path / "work")
    assert again["unet"] == info["unet"]


@needs_weights
def test_builtin_teacher_loads_offline_in_fp32():
    from diffusers import StableDiffusionControlNetPipeline

    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    path = builtin_teacher_dir()
    pipeline = StableDiffusionControlNetPipeline.from_pretrained(path, dtype=torch.float32)
    assert pipeline.unet.dtype == torch.float32 and len(pipeline.tokenizer) == 49408
    assert pipeline.text_encoder.config.vocab_size == 49408
    pipeline.set_progress_bar_config(disable=True)
    control = torch.zeros(1, 3, 64, 64)
    control[:, :, 20:44, 20] = 1.0
    image = pipeline(
        "a red circle", image=control, num_inference_steps=2, height=64, width=64, output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images  # fmt: skip
    assert image.shape == (1, 64, 64, 3)


@needs_weights
def test_builtin_teacher_is_small_and_documented():
    total = sum(p.stat().st_size for p in BUILTIN_TEACHER_DIR.rglob("*") if p.is_file())
    assert total <= 25 * 1024 * 1024
    card = (BUILTIN_TEACHER_DIR / "MODEL_CARD.md").read_text()
    assert "seed" in card.lower() and "refine-teacher" in card
    training = json.loads((BUILTIN_TEACHER_DIR / "training.json").read_text())
    assert training["recipe"] == json.loads(json.dumps(TeacherRecipe().__dict__))


@needs_weights
def test_load_teacher_builtin():
    from refine_control.models.teacher import load_teacher

    teacher = load_teacher("builtin")
    assert teacher.resolution == 64 and teacher.vae_scale_factor == 4
