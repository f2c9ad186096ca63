"""UNet + ControlNet as one module, with named feature taps for distillation.

`ControlledDenoiser.forward` is the graph the exporter writes as `denoiser.onnx`: the ControlNet's residuals
are scaled by `conditioning_scale` and wired into the UNet inside the module. `forward_features` also returns
intermediate tensors by stable names (see `feature_names`) so teacher and student can be aligned.
"""

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from torch import nn

from refine_control.models.student import residual_names


def guidance_embedding(w: torch.Tensor, dim: int) -> torch.Tensor:
    """(B,) guidance scales minus one → (B, dim) sinusoidal embedding, as diffusers' ControlNet pipeline computes it
    for a UNet with `time_cond_proj_dim` (the w-embedding of "Latent Consistency Models", arXiv 2310.04378)."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=w.device) * -(math.log(10000.0) / (half - 1)))
    angles = (w.float() * 1000.0)[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    return torch.nn.functional.pad(emb, (0, 1)) if dim % 2 else emb


@dataclass
class DenoiserOutput:
    """noise_pred: (B, C, h, w) model prediction; features: tap name → (B, C_k, h_k, w_k)."""

    noise_pred: torch.Tensor
    features: dict[str, torch.Tensor]


def _stage_modules(prefix: str, model: nn.Module) -> dict[str, nn.Module]:
    modules = {f"{prefix}.down.{i}": block for i, block in enumerate(model.down_blocks)}
    if getattr(model, "mid_block", None) is not None:
        modules[f"{prefix}.mid"] = model.mid_block
    for i, block in enumerate(getattr(model, "up_blocks", [])):
        modules[f"{prefix}.up.{i}"] = block
    return modules


class ControlledDenoiser(nn.Module):
    """(latents, timestep, text embeddings, control image, scale[, guidance]) → noise prediction.

    A guidance-distilled (few-step) student's UNet has `time_cond_proj_dim`: it reads the guidance scale through a
    sinusoidal embedding of (scale − 1), as diffusers' ControlNet pipeline computes it, and needs no
    unconditional pass."""

    def __init__(self, unet: UNet2DConditionModel, controlnet: ControlNetModel) -> None:
        super().__init__()
        self.unet = unet
        self.controlnet = controlnet

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        controlnet_cond: torch.Tensor,
        conditioning_scale: torch.Tensor | float = 1.0,
        guidance_scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Shapes: sample (B, 4, h, w), timestep (B,), encoder_hidden_states (B, L, D), controlnet_cond (B, 3, H, W),
        guidance_scale (B,) for a guidance-embedded UNet (required there, ignored otherwise)."""
        return self._run(sample, timestep, encoder_hidden_states, controlnet_cond, conditioning_scale, guidance_scale)[
            0
        ]

    @property
    def guidance_embedded(self) -> bool:
        return self.unet.config.time_cond_proj_dim is not None

    def forward_features(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        controlnet_cond: torch.Tensor,
        taps: list[str],
    ) -> DenoiserOutput:
        """Run the denoiser and return the noise prediction plus the requested named features."""
        stage_taps = [t for t in taps if not t.startswith("residual.")]
        with self._record(stage_taps) as stages:
            noise_pred, residuals = self._run(sample, timestep, encoder_hidden_states, controlnet_cond, 1.0)
        features = {name: residuals[name] for name in taps if name in residuals}
        features.update(stages)
        return DenoiserOutput(noise_pred, features)

    def feature_names(self, trainable_unet: bool) -> list[str]:
        """Default taps: every control residual, and the stage outputs of the modules being trained."""
        cfg = self.controlnet.config
        names = [*residual_names(len(cfg.block_out_channels), cfg.layers_per_block), "residual.mid"]
        names += list(_stage_modules("controlnet", self.controlnet))
        if trainable_unet:
            names += list(_stage_modules("unet", self.unet))
        return names

    def _run(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        controlnet_cond: torch.Tensor,
        conditioning_scale: torch.Tensor | float,
        guidance_scale: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        timestep_cond = None
        if self.guidance_embedded:
            if guidance_scale is None:
                raise ValueError("this denoiser embeds the guidance scale: pass `guidance_scale`")
            dim = self.unet.config.time_cond_proj_dim
            timestep_cond = guidance_embedding(guidance_scale.reshape(-1) - 1, dim).to(sample.dtype)
        down, mid = self.controlnet(
            sample,
            timestep,
            encoder_hidden_states=encoder_hidden_states,
            controlnet_cond=controlnet_cond,
            return_dict=False,
        )
        down = [r * conditioning_scale for r in down]
        mid = mid * conditioning_scale
        noise_pred = self.unet(
            sample,
            timestep,
            encoder_hidden_states=encoder_hidden_states,
            timestep_cond=timestep_cond,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
            return_dict=False,
        )[0]
        cfg = self.controlnet.config
        names = residual_names(len(cfg.block_out_channels), cfg.layers_per_block)
        residuals = dict(zip(names, down, strict=True))
        residuals["residual.mid"] = mid
        return noise_pred, residuals

    @contextlib.contextmanager
    def _record(self, taps: list[str]) -> Iterator[dict[str, torch.Tensor]]:
        modules = {**_stage_modules("controlnet", self.controlnet), **_stage_modules("unet", self.unet)}
        unknown = [t for t in taps if t not in modules]
        if unknown:
            raise KeyError(f"unknown feature taps {unknown}; known: {sorted(modules)}")
        recorded: dict[str, torch.Tensor] = {}

        def hook(name: str):
            def store(_module: nn.Module, _inputs: object, output: object) -> None:
                # Down blocks return (hidden_states, residuals); keep the stage output.
                recorded[name] = output[0] if isinstance(output, tuple) else output

            return store

        handles = [modules[t].register_forward_hook(hook(t)) for t in taps]
        try:
            yield recorded
        finally:
            for handle in handles:
                handle.remove()


def with_guidance_input(unet: UNet2DConditionModel, dim: int = 256) -> UNet2DConditionModel:
    """A copy of `unet` that also reads a guidance-scale embedding of width `dim` (`time_cond_proj_dim`).

    Every weight is copied; the new projection starts at zero, so the copy computes exactly what `unet` did until
    few-step training teaches it to use the scale."""
    if unet.config.time_cond_proj_dim is not None:
        return unet
    config = {k: v for k, v in unet.config.items() if not k.startswith("_")}
    guided = UNet2DConditionModel.from_config({**config, "time_cond_proj_dim": dim}).to(unet.device, unet.dtype)
    missing, unexpected = guided.load_state_dict(unet.state_dict(), strict=False)
    if unexpected or missing != ["time_embedding.cond_proj.weight"]:
        raise RuntimeError(f"unexpected weights when adding the guidance input: {missing} / {unexpected}")
    nn.init.zeros_(guided.time_embedding.cond_proj.weight)
    return guided
