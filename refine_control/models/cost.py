"""Compute cost of a denoiser step, counted rather than timed: multiply-accumulates (MACs) per forward pass.

Counted with `torch.utils.flop_counter.FlopCounterMode` on copies built on the meta device from the models'
configs (no weights, no memory): convolutions, matmuls and attention; element-wise ops are not counted. The same
count serves the preset table, the demo and `benchmarks/latency.py`.
"""

import inspect
from collections.abc import Callable
from typing import Any

import torch

from refine_control.models.denoiser import ControlledDenoiser


def count_macs(fn: Callable[[], object]) -> int:
    """MACs of running `fn()` (FLOPs / 2, as FlopCounterMode counts a multiply-add as two)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() // 2


def _config(model: Any) -> dict[str, Any]:
    return {k: v for k, v in model.config.items() if not k.startswith("_")}


def denoiser_macs(unet: Any, controlnet: Any, image_size: int, vae_scale_factor: int, text_len: int = 77) -> int:
    """MACs of one denoiser step (UNet + ControlNet) at batch 1 for `image_size`² images (CFG doubles it)."""
    with torch.device("meta"):
        meta = ControlledDenoiser(
            type(unet).from_config(_config(unet)), type(controlnet).from_config(_config(controlnet))
        )
        latent = image_size // vae_scale_factor
        sample = torch.zeros(1, unet.config.in_channels, latent, latent)
        text = torch.zeros(1, text_len, unet.config.cross_attention_dim)
        cond = torch.zeros(1, controlnet.config.conditioning_channels, image_size, image_size)
        guidance = torch.full((1,), 3.0) if meta.guidance_embedded else None
        return count_macs(lambda: meta(sample, torch.zeros(1), text, cond, 1.0, guidance))


def decoder_macs(vae: Any, image_size: int) -> int:
    """MACs of decoding one latent to an `image_size`² image (an `AutoencoderKL` or `AutoencoderTiny`)."""
    levels = getattr(vae.config, "block_out_channels", None) or vae.config.decoder_block_out_channels  # KL | Tiny
    factor = 2 ** (len(levels) - 1)
    accepted = inspect.signature(type(vae).__init__).parameters  # AutoencoderTiny's config holds extra keys
    with torch.device("meta"):
        meta = type(vae).from_config({k: v for k, v in _config(vae).items() if k in accepted})
        latent = torch.zeros(1, vae.config.latent_channels, image_size // factor, image_size // factor)
        return count_macs(lambda: meta.decode(latent))


def text_encoder_macs(text_encoder: Any, text_len: int = 77) -> int:
    """MACs of encoding one prompt."""
    with torch.device("meta"):
        meta = type(text_encoder)(text_encoder.config)
        ids = torch.zeros(1, text_len, dtype=torch.long)
        return count_macs(lambda: meta(ids))
