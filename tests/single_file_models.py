"""Save a diffusers SD1.x pipeline as one checkpoint file in the original (LDM) layout, as A1111 / ComfyUI hold it.

diffusers only converts the other way (original → diffusers, in `from_single_file`), so the tests hold the inverse
key map here, for the UNet, VAE and CLIP text encoder of any SD1.x-shaped config (the tiny one included). The names
follow the original Stable Diffusion code: `model.diffusion_model.*`, `first_stage_model.*`,
`cond_stage_model.transformer.*`."""

from typing import Any

import torch

RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
          "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}  # fmt: skip
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _rename(state: dict[str, torch.Tensor], prefix: str, new: str, inner: dict[str, str] | None = None) -> dict:
    out = {}
    for key in [k for k in state if k.startswith(prefix)]:
        rest = key[len(prefix) :]
        for old_name, new_name in (inner or {}).items():
            if rest.startswith(old_name + "."):
                rest = new_name + rest[len(old_name) :]
                break
        out[new + rest] = state.pop(key)
    return out


def unet_to_original(unet: Any) -> dict[str, torch.Tensor]:
    state, config = dict(unet.state_dict()), unet.config
    per = config.layers_per_block
    out: dict[str, torch.Tensor] = {}
    fixed = {"time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
             "conv_in.": "input_blocks.0.0.", "conv_norm_out.": "out.0.", "conv_out.": "out.2."}  # fmt: skip
    for old, new in fixed.items():
        out |= _rename(state, old, new)
    levels = len(config.block_out_channels)
    for i in range(levels):
        for j in range(per):
            n = (per + 1) * i + j + 1
            out |= _rename(state, f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{n}.0.", RESNET)
            out |= _rename(state, f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{n}.1.")
        if i < levels - 1:
            out |= _rename(state, f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(per + 1) * (i + 1)}.0.op.")
    for i in range(levels):
        has_attention = "CrossAttn" in config.up_block_types[i]
        for j in range(per + 1):
            n = (per + 1) * i + j
            out |= _rename(state, f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{n}.0.", RESNET)
            out |= _rename(state, f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{n}.1.")
        if i < levels - 1:
            n = (per + 1) * i + per
            out |= _rename(state, f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{n}.{2 if has_attention else 1}.")
    out |= _rename(state, "mid_block.resnets.0.", "middle_block.0.", RESNET)
    out |= _rename(state, "mid_block.attentions.0.", "middle_block.1.")
    out |= _rename(state, "mid_block.resnets.1.", "middle_block.2.", RESNET)
    assert not state, f"unmapped UNet keys: {sorted(state)[:5]}"
    return {"model.diffusion_model." + k: v for k, v in out.items()}


def vae_to_original(vae: Any) -> dict[str, torch.Tensor]:
    state, levels = dict(vae.state_dict()), len(vae.config.block_out_channels)
    out: dict[str, torch.Tensor] = {}
    inner = {"conv_shortcut": "nin_shortcut"}
    for part in ("encoder", "decoder"):
        for old, new in (("conv_in.", "conv_in."), ("conv_out.", "conv_out."), ("conv_norm_out.", "norm_out.")):
            out |= _rename(state, f"{part}.{old}", f"{part}.{new}")
        for j in range(2):
            out |= _rename(state, f"{part}.mid_block.resnets.{j}.", f"{part}.mid.block_{j + 1}.", inner)
        attention = _rename(state, f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1.", VAE_ATTENTION)
        out |= {k: v[..., None, None] if v.ndim == 2 else v for k, v in attention.items()}  # linear → 1×1 conv
    for i in range(levels):
        for j in range(vae.config.layers_per_block + 1):
            out |= _rename(state, f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}.", inner)
            out |= _rename(
                state, f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{levels - 1 - i}.block.{j}.", inner
            )
        out |= _rename(state, f"encoder.down_blocks.{i}.downsamplers.0.conv.", f"encoder.down.{i}.downsample.conv.")
        out |= _rename(
            state, f"decoder.up_blocks.{i}.upsamplers.0.conv.", f"decoder.up.{levels - 1 - i}.upsample.conv."
        )
    out |= _rename(state, "quant_conv.", "quant_conv.") | _rename(state, "post_quant_conv.", "post_quant_conv.")
    assert not state, f"unmapped VAE keys: {sorted(state)[:5]}"
    return {"first_stage_model." + k: v for k, v in out.items()}


def pipeline_to_original(pipeline: Any) -> dict[str, torch.Tensor]:
    """The UNet, VAE and text encoder of an SD1.x pipeline as one original-layout state dict."""
    # The original layout nests CLIP under `text_model.` (recent transformers' CLIPTextModel no longer does).
    text = {
        "cond_stage_model.transformer." + (k if k.startswith("text_model.") else "text_model." + k): v
        for k, v in pipeline.text_encoder.state_dict().items()
    }
    state = unet_to_original(pipeline.unet) | vae_to_original(pipeline.vae) | text
    return {k: v.detach().contiguous().clone() for k, v in state.items()}
