import pytest
import torch
from diffusers import ControlNetModel, StableDiffusionControlNetPipeline, UNet2DConditionModel

from refine_control.errors import ConfigError
from refine_control.models.cost import denoiser_macs
from refine_control.models.denoiser import ControlledDenoiser
from refine_control.models.presets import STUDENT_PRESETS, StudentPreset, build_student, count_params
from refine_control.models.student import AsymControlNetModel, residual_names, residual_widths

ALL_PRESETS = STUDENT_PRESETS.names()


@pytest.fixture(scope="module")
def tiny_teacher(tiny_pipeline_dir):
    pipe = StableDiffusionControlNetPipeline.from_pretrained(tiny_pipeline_dir)
    return pipe.unet, pipe.controlnet


def inputs(latent: int, cross_dim: int, image: int, batch: int = 2):
    return (
        torch.randn(batch, 4, latent, latent),
        torch.randint(0, 1000, (batch,)),
        torch.randn(batch, 5, cross_dim),
        torch.rand(batch, 3, image, image),
    )


@pytest.mark.parametrize("name", ALL_PRESETS)
def test_every_preset_builds_forwards_and_backwards_on_the_tiny_teacher(tiny_teacher, name):
    teacher_unet, teacher_cn = tiny_teacher
    preset = STUDENT_PRESETS.get(name)
    unet, controlnet = build_student(teacher_unet, teacher_cn, preset)
    assert (unet is teacher_unet) == (not preset.shrink_unet)
    student = ControlledDenoiser(unet, controlnet)
    teacher = ControlledDenoiser(teacher_unet, teacher_cn)
    # Counted by diffusers (ModelMixin.num_parameters), not by the project's count_params: a shared UNet is the
    # teacher's own, a shrunk one and every student ControlNet are smaller.
    if preset.shrink_unet:
        assert unet.num_parameters() < teacher_unet.num_parameters()
    assert controlnet.num_parameters() < teacher_cn.num_parameters()
    assert count_params(unet, controlnet) == unet.num_parameters() + controlnet.num_parameters()
    sample, t, text, cond = inputs(8, 32, 16)
    out = student.forward_features(sample, t, text, cond, student.feature_names(preset.shrink_unet))
    assert out.noise_pred.shape == sample.shape
    # Every student residual has the width of the teacher residual feeding the same UNet skip connection.
    ref = teacher.forward_features(sample, t, text, cond, teacher.feature_names(False))
    for tap, value in out.features.items():
        if tap.startswith("residual.") and not preset.shrink_unet:
            assert value.shape == ref.features[tap].shape
    out.noise_pred.square().mean().backward()
    assert any(p.grad is not None for p in controlnet.parameters())


@pytest.mark.parametrize("name", ALL_PRESETS)
def test_every_preset_fits_the_sd15_configs(name):
    """SD1.5 UNet + ControlNet configs on the meta device: shapes only, no weights, no memory."""
    with torch.device("meta"):
        teacher_unet = UNet2DConditionModel(cross_attention_dim=768)
        teacher_cn = ControlNetModel(cross_attention_dim=768)
        preset = STUDENT_PRESETS.get(name)
        unet, controlnet = build_student(teacher_unet, teacher_cn, preset)
        student = ControlledDenoiser(unet, controlnet)
        out = student.forward_features(*inputs(64, 768, 512, batch=1), student.feature_names(preset.shrink_unet))
    assert out.noise_pred.shape == (1, 4, 64, 64)
    assert controlnet.config.block_out_channels[0] < 320
    assert count_params(controlnet) < 0.3 * count_params(teacher_cn)
    if preset.shrink_unet:
        # The compact presets' point: at least 4× fewer MACs per step than the SD1.5 teacher at 512².
        assert denoiser_macs(unet, controlnet, 512, 8) * 4 < denoiser_macs(teacher_unet, teacher_cn, 512, 8)
        assert unet.config.layers_per_block == 1


def test_attention_free_stages_remove_full_resolution_attention(tiny_teacher):
    unet, controlnet = build_student(*tiny_teacher, STUDENT_PRESETS.get("compact-tiny"))
    assert unet.config.down_block_types[0] == "DownBlock2D"
    assert unet.config.up_block_types[-1] == "UpBlock2D"
    assert unet.config.down_block_types[1] == "CrossAttnDownBlock2D"
    assert controlnet.config.down_block_types == unet.config.down_block_types


def test_preset_that_does_not_fit_gives_a_clear_error(tiny_teacher):
    odd = StudentPreset("odd", "narrow", 0.5, True)
    with torch.device("meta"):
        unet = UNet2DConditionModel(
            block_out_channels=(24, 48),
            norm_num_groups=24,
            attention_head_dim=5,
            cross_attention_dim=32,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        )
    with pytest.raises(ConfigError, match=r"its width 24 × 0.5 rounds to 24, which 5 attention heads") as err:
        build_student(unet, tiny_teacher[1], odd)
    # The ControlNet-only presets scale the (tiny) ControlNet and still fit; every compact one needs this UNet.
    assert err.value.hint == "presets that fit this teacher: controlnet-half, controlnet-quarter"
    deeper = StudentPreset("deeper", "changes depth", 0.5, False, layers_per_block=1)
    with pytest.raises(ConfigError, match="has 1 layers per block but shares the teacher's UNet, which has 2") as err:
        build_student(*tiny_teacher, deeper)
    assert err.value.hint.startswith("presets that fit this teacher: controlnet-half, controlnet-quarter")
    with pytest.raises(ConfigError, match="unknown student preset 'nope'; choose one of: controlnet-half"):
        STUDENT_PRESETS.get("nope")


def test_residual_layout_names_align_by_distance_from_stage_end():
    assert residual_widths((4, 8), 2) == [4, 4, 4, 4, 8, 8]
    assert residual_names(2, 2) == [
        "residual.stem",
        "residual.0.resnet1",
        "residual.0.resnet0",
        "residual.0.downsample",
        "residual.1.resnet1",
        "residual.1.resnet0",
    ]
    assert residual_names(2, 1) == [
        "residual.stem",
        "residual.0.resnet0",
        "residual.0.downsample",
        "residual.1.resnet0",
    ]


def test_asym_controlnet_round_trips_and_runs_in_the_pipeline(tiny_pipeline_dir, tmp_path):
    pipe = StableDiffusionControlNetPipeline.from_pretrained(tiny_pipeline_dir)
    _, controlnet = build_student(pipe.unet, pipe.controlnet, STUDENT_PRESETS.get("controlnet-half"))
    assert isinstance(controlnet, AsymControlNetModel)
    torch.manual_seed(0)
    for conv in controlnet.controlnet_down_blocks:
        torch.nn.init.normal_(conv.weight)
    controlnet.save_pretrained(tmp_path / "cn")
    loaded = AsymControlNetModel.from_pretrained(tmp_path / "cn")
    assert list(loaded.config.target_block_out_channels) == [16, 32]
    assert list(loaded.config.block_out_channels) == [8, 16]
    for (name, a), (_, b) in zip(controlnet.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    pipe.controlnet = loaded
    pipe.save_pretrained(tmp_path / "pipe")
    reloaded = StableDiffusionControlNetPipeline.from_pretrained(tmp_path / "pipe")
    assert type(reloaded.controlnet) is AsymControlNetModel
    image = reloaded(
        "a red square",
        image=torch.rand(1, 3, 16, 16),
        num_inference_steps=2,
        height=16,
        width=16,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    assert image.shape == (1, 16, 16, 3)


def test_a_controlnet_narrower_than_its_compact_unet_reaches_the_unets_widths(tiny_teacher):
    preset = StudentPreset("narrow-cn", "test", 0.5, True, 1, controlnet_width=0.25, conditioning_width=0.5)
    unet, controlnet = build_student(*tiny_teacher, preset)
    assert isinstance(controlnet, AsymControlNetModel)
    assert tuple(unet.config.block_out_channels) == (8, 16)
    assert tuple(controlnet.config.block_out_channels) == (8, 8)  # 16·0.25 and 32·0.25, at least one norm group
    assert tuple(controlnet.config.target_block_out_channels) == (8, 16)
    assert tuple(controlnet.config.conditioning_embedding_out_channels) == (4, 8)  # the teacher's (8, 16) halved
    assert controlnet.config.layers_per_block == 1
    sample, t, text, cond = inputs(8, 32, 16)
    down, mid = controlnet(sample, t, encoder_hidden_states=text, controlnet_cond=cond, return_dict=False)
    assert [r.shape[1] for r in down] == [8, 8, 8, 16] and mid.shape[1] == 16
    out = ControlledDenoiser(unet, controlnet)(sample, t, text, cond)
    assert out.shape == sample.shape
