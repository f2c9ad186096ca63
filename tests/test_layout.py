"""channels_last for models that only run forward: the same values up to float rounding, weights unchanged."""

import torch
from tiny_models import build_tiny_pipeline

from refine_control.models.denoiser import ControlledDenoiser
from refine_control.models.layout import to_channels_last


def test_channels_last_denoiser_matches_contiguous_up_to_rounding():
    pipeline = build_tiny_pipeline()
    denoiser = ControlledDenoiser(pipeline.unet, pipeline.controlnet).eval()
    gen = torch.Generator().manual_seed(0)
    size = pipeline.unet.config.sample_size
    sample = torch.randn(3, pipeline.unet.config.in_channels, size, size, generator=gen)
    timestep = torch.tensor([1, 500, 999])
    text = torch.randn(3, 7, pipeline.unet.config.cross_attention_dim, generator=gen)
    cond = torch.rand(3, 3, size * pipeline.vae_scale_factor, size * pipeline.vae_scale_factor, generator=gen)
    weights = {k: v.clone() for k, v in denoiser.state_dict().items()}
    with torch.no_grad():
        before = denoiser(sample, timestep, text, cond)
        to_channels_last(denoiser)
        after = denoiser(sample, timestep, text, cond)
    conv = pipeline.unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert all(torch.equal(weights[k], v) for k, v in denoiser.state_dict().items())
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)
    assert not torch.equal(sample, torch.zeros_like(sample))  # a real input, not a degenerate one


def test_vae_decode_matches_contiguous_up_to_rounding():
    vae = build_tiny_pipeline().vae.eval()
    latents = torch.randn(2, vae.config.latent_channels, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = vae.decode(latents).sample
        to_channels_last(vae)
        after = vae.decode(latents).sample
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)
