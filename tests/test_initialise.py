"""Student initialisation from the teacher: what is copied exactly, what is selected, which blocks are paired."""

import pytest
import torch
from diffusers import ControlNetModel, UNet2DConditionModel

from refine_control.models.denoiser import ControlledDenoiser
from refine_control.models.initialise import depth_pairing, initialise_student
from refine_control.models.presets import STUDENT_PRESETS, build_student
from refine_control.models.transfer import transfer_parameters


def tiny_teacher(layers: int = 2, widths: tuple[int, ...] = (16, 32)):
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=widths,
        layers_per_block=layers,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=8,
        attention_head_dim=2,
        norm_num_groups=4,
    )
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(4, 8))
    for conv in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
        torch.nn.init.normal_(conv.weight, std=0.1)
    return unet, controlnet


def compact(teacher):
    return build_student(*teacher, STUDENT_PRESETS.get("compact-tiny"))


def test_uniform_takes_evenly_spaced_channels_of_every_dimension():
    (t_unet, t_cn), (s_unet, s_cn) = (teacher := tiny_teacher()), compact(teacher)
    initialise_student("uniform", {"unet": t_unet, "controlnet": t_cn}, {"unet": s_unet, "controlnet": s_cn})
    # conv_in: 16 → 8 output channels, i.e. teacher channels 0, 2, ..., 14; the 4 latent inputs are kept.
    assert torch.equal(s_unet.conv_in.weight, t_unet.conv_in.weight[::2])
    # The sinusoidal timestep embedding of width 8 has the teacher's even frequencies: columns 0, 2, ... of each half.
    assert torch.equal(s_unet.time_embedding.linear_1.weight, t_unet.time_embedding.linear_1.weight[::2, ::2])
    # Cross-attention keys read the (unchanged) text width whole.
    s_key = s_unet.down_blocks[1].attentions[0].transformer_blocks[0].attn2.to_k.weight
    t_key = t_unet.down_blocks[1].attentions[0].transformer_blocks[0].attn2.to_k.weight
    assert torch.equal(s_key, t_key[::2])
    # The ControlNet's conditioning embedding has the teacher's widths: copied exactly except its output conv.
    assert torch.equal(s_cn.controlnet_cond_embedding.conv_in.weight, t_cn.controlnet_cond_embedding.conv_in.weight)
    assert torch.equal(
        s_cn.controlnet_cond_embedding.conv_out.weight, t_cn.controlnet_cond_embedding.conv_out.weight[::2]
    )


def test_uniform_pairs_blocks_by_the_skip_they_read():
    (t_unet, t_cn), (s_unet, s_cn) = (teacher := tiny_teacher()), compact(teacher)
    initialise_student("uniform", {"unet": t_unet, "controlnet": t_cn}, {"unet": s_unet, "controlnet": s_cn})
    # Down blocks keep the teacher's first layer.
    assert torch.equal(
        s_unet.down_blocks[0].resnets[0].conv1.weight, t_unet.down_blocks[0].resnets[0].conv1.weight[::2, ::2]
    )
    # Up blocks: layer 0 reads the stage's last down layer in both; the student's last layer (1) reads the previous
    # stage's output, like the teacher's last layer (2).
    up = s_unet.up_blocks[1].resnets
    assert torch.equal(up[0].conv2.weight, t_unet.up_blocks[1].resnets[0].conv2.weight[::2, ::2])
    assert torch.equal(up[1].conv2.weight, t_unet.up_blocks[1].resnets[2].conv2.weight[::2, ::2])
    # ControlNet output convs: the student's residual list (stem, stage0.resnet, stage0.down, stage1.resnet) maps to
    # the teacher residuals feeding the same skip: stem 0, the stage's last resnet (2 and 5), downsampler 3.
    for student_index, teacher_index in {0: 0, 1: 2, 2: 3, 3: 5}.items():
        s_conv, t_conv = s_cn.controlnet_down_blocks[student_index], t_cn.controlnet_down_blocks[teacher_index]
        assert torch.equal(s_conv.weight, t_conv.weight[::2, ::2])


def test_depth_pairing_is_identity_for_equal_depth():
    unet, controlnet = tiny_teacher()
    for model in (unet, controlnet):
        rename = depth_pairing(model, model)
        assert all(rename(name) == name for name in model.state_dict())


def test_uniform_on_a_teacher_sized_student_reproduces_the_teacher():
    t_unet, t_cn = teacher = tiny_teacher()
    torch.manual_seed(1)
    s_unet, s_cn = UNet2DConditionModel.from_config(t_unet.config), ControlNetModel.from_config(t_cn.config)
    initialise_student("uniform", {"unet": t_unet, "controlnet": t_cn}, {"unet": s_unet, "controlnet": s_cn})
    args = (torch.randn(2, 4, 8, 8), torch.tensor([10, 900]), torch.randn(2, 3, 8), torch.rand(2, 3, 16, 16))
    with torch.no_grad():
        assert torch.equal(ControlledDenoiser(s_unet, s_cn)(*args), ControlledDenoiser(*teacher)(*args))


def test_random_copies_nothing():
    (t_unet, t_cn), (s_unet, s_cn) = (teacher := tiny_teacher()), compact(teacher)
    before = {k: v.clone() for k, v in s_unet.state_dict().items()}
    report = initialise_student("random", {"unet": t_unet, "controlnet": t_cn}, {"unet": s_unet, "controlnet": s_cn})
    assert report == {"init": "random"}
    assert all(torch.equal(before[k], v) for k, v in s_unet.state_dict().items())


def test_leading_takes_the_first_channels_and_same_names():
    (t_unet, t_cn), (s_unet, s_cn) = (teacher := tiny_teacher()), compact(teacher)
    report = initialise_student("leading", {"unet": t_unet, "controlnet": t_cn}, {"unet": s_unet, "controlnet": s_cn})
    assert torch.equal(s_unet.conv_in.weight, t_unet.conv_in.weight[:8])
    # Same names: the student's last up layer (1) starts from the teacher's layer 1, cut to its shape.
    t_conv = t_unet.up_blocks[1].resnets[1].conv2.weight
    assert torch.equal(s_unet.up_blocks[1].resnets[1].conv2.weight, t_conv[:8, :8])
    assert report["unet"]["sliced"] and report["unet"]["elements_copied"] == report["unet"]["elements_total"]


def test_transfer_rejects_an_unknown_selection():
    unet, _ = tiny_teacher()
    with pytest.raises(ValueError, match="leading or uniform"):
        transfer_parameters(unet, unet, select="random")
