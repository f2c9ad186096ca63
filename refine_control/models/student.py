"""The student's ControlNet with asymmetric output ("zero") convolutions.

A width-reduced ControlNet that drives the teacher's (wider) UNet needs its residuals at the UNet's widths.
`AsymControlNetModel` is a diffusers `ControlNetModel` whose 1×1 output convolutions map the student's widths
to `target_block_out_channels`, so its residuals plug into the UNet and compare element by element with the
teacher ControlNet's residuals. It keeps ControlNetModel's forward contract, so it drops into
`StableDiffusionControlNetPipeline`, and it round-trips through `save_pretrained` / `from_pretrained`
(the arguments are listed explicitly because diffusers' config records only named `__init__` arguments).
"""

from diffusers import ControlNetModel, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

# A pipeline's model_index.json names this module as the component's library; diffusers then looks up its base
# classes (ModelMixin) *in this module* to pick the loader, so the name must be importable from here.
__all__ = ["AsymControlNetModel", "ModelMixin", "residual_names", "residual_widths"]


def residual_widths(block_out_channels: tuple[int, ...], layers_per_block: int) -> list[int]:
    """Width of each down-path residual, in ControlNet order: stem, then per stage its layers and downsampler."""
    widths = [block_out_channels[0]]
    for stage, width in enumerate(block_out_channels):
        widths += [width] * layers_per_block
        if stage < len(block_out_channels) - 1:
            widths.append(width)
    return widths


def residual_names(num_stages: int, layers_per_block: int) -> list[str]:
    """Stable names of the down-path residuals, counted from each stage's end.

    `residual.1.resnet0` is the last resnet of stage 1 whatever the depth, so a student with fewer layers per
    block aligns each residual with the teacher residual that feeds the same UNet skip connection.
    """
    names = ["residual.stem"]
    for stage in range(num_stages):
        names += [f"residual.{stage}.resnet{layers_per_block - 1 - j}" for j in range(layers_per_block)]
        if stage < num_stages - 1:
            names.append(f"residual.{stage}.downsample")
    return names


def _zero_conv(c_in: int, c_out: int) -> nn.Conv2d:
    conv = nn.Conv2d(c_in, c_out, kernel_size=1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class AsymControlNetModel(ControlNetModel):
    """ControlNetModel whose output convolutions map `block_out_channels` to `target_block_out_channels`."""

    @register_to_config
    def __init__(
        self,
        target_block_out_channels: tuple[int, ...] | None = None,
        in_channels: int = 4,
        conditioning_channels: int = 3,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        down_block_types: tuple[str, ...] = (
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        mid_block_type: str | None = "UNetMidBlock2DCrossAttn",
        only_cross_attention: bool | tuple[bool] = False,
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1,
        act_fn: str = "silu",
        norm_num_groups: int | None = 32,
        norm_eps: float = 1e-05,
        cross_attention_dim: int = 1280,
        transformer_layers_per_block: int | tuple[int, ...] = 1,
        encoder_hid_dim: int | None = None,
        encoder_hid_dim_type: str | None = None,
        attention_head_dim: int | tuple[int, ...] = 8,
        num_attention_heads: int | tuple[int, ...] | None = None,
        use_linear_projection: bool = False,
        class_embed_type: str | None = None,
        addition_embed_type: str | None = None,
        addition_time_embed_dim: int | None = None,
        num_class_embeds: int | None = None,
        upcast_attention: bool = False,
        resnet_time_scale_shift: str = "default",
        projection_class_embeddings_input_dim: int | None = None,
        controlnet_conditioning_channel_order: str = "rgb",
        conditioning_embedding_out_channels: tuple[int, ...] | None = (16, 32, 96, 256),
        global_pool_conditions: bool = False,
        addition_embed_type_num_heads: int = 64,
    ):
        super().__init__(
            in_channels=in_channels,
            conditioning_channels=conditioning_channels,
            flip_sin_to_cos=flip_sin_to_cos,
            freq_shift=freq_shift,
            down_block_types=down_block_types,
            mid_block_type=mid_block_type,
            only_cross_attention=only_cross_attention,
            block_out_channels=block_out_channels,
            layers_per_block=layers_per_block,
            downsample_padding=downsample_padding,
            mid_block_scale_factor=mid_block_scale_factor,
            act_fn=act_fn,
            norm_num_groups=norm_num_groups,
            norm_eps=norm_eps,
            cross_attention_dim=cross_attention_dim,
            transformer_layers_per_block=transformer_layers_per_block,
            encoder_hid_dim=encoder_hid_dim,
            encoder_hid_dim_type=encoder_hid_dim_type,
            attention_head_dim=attention_head_dim,
            num_attention_heads=num_attention_heads,
            use_linear_projection=use_linear_projection,
            class_embed_type=class_embed_type,
            addition_embed_type=addition_embed_type,
            addition_time_embed_dim=addition_time_embed_dim,
            num_class_embeds=num_class_embeds,
            upcast_attention=upcast_attention,
            resnet_time_scale_shift=resnet_time_scale_shift,
            projection_class_embeddings_input_dim=projection_class_embeddings_input_dim,
            controlnet_conditioning_channel_order=controlnet_conditioning_channel_order,
            conditioning_embedding_out_channels=conditioning_embedding_out_channels,
            global_pool_conditions=global_pool_conditions,
            addition_embed_type_num_heads=addition_embed_type_num_heads,
        )
        target = tuple(target_block_out_channels or block_out_channels)
        if len(target) != len(block_out_channels):
            raise ValueError(
                f"`target_block_out_channels` needs one width per stage ({len(block_out_channels)}), got {target}"
            )
        sources = residual_widths(tuple(block_out_channels), layers_per_block)
        targets = residual_widths(target, layers_per_block)
        self.controlnet_down_blocks = nn.ModuleList(_zero_conv(s, t) for s, t in zip(sources, targets, strict=True))
        self.controlnet_mid_block = _zero_conv(block_out_channels[-1], target[-1])
