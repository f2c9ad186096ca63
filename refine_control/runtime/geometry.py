"""`Geometry`: the one description of a model's tensor shapes, shared by export, parity, runtime and benchmarks.

Built from the diffusers configs at export (`Geometry.from_pipeline`), stored in `manifest.json` (its fields are
the manifest's `pipeline` facts) and read back by the runtime (`Geometry.from_facts`). It names every graph's
inputs and makes example feeds for them, so the exporter, the quantiser's calibration and the benchmark cannot
disagree about a shape. numpy only: the runtime imports it without torch.
"""

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from refine_control.runtime.layout import (
    DENOISER_INPUTS,
    GUIDANCE_INPUT,
    TEXT_ENCODER_INPUTS,
    VAE_DECODER_INPUTS,
)


@dataclass(frozen=True)
class Geometry:
    latent_channels: int
    vae_scale_factor: int  # image side / latent side
    downsampling: int  # the UNet's total downsampling: latent sides are multiples of it
    text_max_length: int  # tokens per prompt
    vocab_size: int
    cross_attention_dim: int  # text embedding width
    control_channels: int
    resolution: int  # the trained image side
    guidance_embedding_dim: int | None = None  # a guidance-distilled UNet's `time_cond_proj_dim`

    @classmethod
    def from_pipeline(cls, pipe: Any, resolution: int | None = None) -> "Geometry":
        """From a diffusers ControlNet pipeline (its `vae_scale_factor` and the UNet / ControlNet / text configs)."""
        unet = pipe.unet.config
        factor = int(pipe.vae_scale_factor)
        return cls(
            latent_channels=int(unet.in_channels),
            vae_scale_factor=factor,
            downsampling=2 ** (len(unet.block_out_channels) - 1),
            text_max_length=int(pipe.tokenizer.model_max_length),
            vocab_size=int(pipe.text_encoder.config.vocab_size),
            cross_attention_dim=int(unet.cross_attention_dim),
            control_channels=int(pipe.controlnet.config.conditioning_channels),
            resolution=int(resolution or unet.sample_size * factor),
            guidance_embedding_dim=unet.time_cond_proj_dim,
        )

    @classmethod
    def from_facts(cls, facts: dict[str, Any]) -> "Geometry":
        """Read back from a manifest's `pipeline` facts; `KeyError` / `TypeError` / `ValueError` when malformed."""
        values = {f.name: facts[f.name] for f in fields(cls) if f.name != "guidance_embedding_dim"}
        dim = facts.get("guidance_embedding_dim")
        return cls(**{k: int(v) for k, v in values.items()}, guidance_embedding_dim=None if dim is None else int(dim))

    def to_facts(self) -> dict[str, Any]:
        return {**asdict(self), "size_multiple": self.size_multiple}

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this."""
        return self.vae_scale_factor * self.downsampling

    @property
    def guidance_embedded(self) -> bool:
        """True for a guidance-distilled student: one batch-1 pass per step reads the scale as an input."""
        return self.guidance_embedding_dim is not None

    def inputs(self, graph: str) -> tuple[str, ...]:
        """The graph's input names, in order."""
        if graph == "denoiser":
            return DENOISER_INPUTS + ((GUIDANCE_INPUT,) if self.guidance_embedded else ())
        return {"text_encoder": TEXT_ENCODER_INPUTS, "vae_decoder": VAE_DECODER_INPUTS}[graph]

    def latent_shape(self, height: int, width: int, batch: int = 1) -> tuple[int, int, int, int]:
        return (batch, self.latent_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)

    def example_latent_side(self) -> int:
        """A latent side for example inputs: the trained one, rounded down to the downsampling, but at least twice
        it (torch.export specialises a dimension whose example value is 1)."""
        side = self.resolution // self.vae_scale_factor
        return max(side - side % self.downsampling, 2 * self.downsampling)

    def example_feeds(self, graph: str, batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
        """Random inputs of the right shapes and dtypes for `graph` (the VAE's latents are not square, so a
        height/width mix-up fails at export, not at run time)."""
        rng = np.random.default_rng(seed)
        side = self.example_latent_side()
        image = side * self.vae_scale_factor
        if graph == "text_encoder":
            ids = rng.integers(0, self.vocab_size, (batch, self.text_max_length), dtype=np.int64)
            return {TEXT_ENCODER_INPUTS[0]: ids}
        if graph == "vae_decoder":
            latents = rng.standard_normal((batch, self.latent_channels, side, side + self.downsampling))
            return {VAE_DECODER_INPUTS[0]: latents.astype(np.float32)}
        return self.denoiser_feeds(
            rng.standard_normal((batch, self.latent_channels, side, side)).astype(np.float32),
            np.full((batch,), 500.0, np.float32),
            rng.standard_normal((batch, self.text_max_length, self.cross_attention_dim)).astype(np.float32),
            rng.random((batch, self.control_channels, image, image), dtype=np.float32),
            1.0,
            3.0,
        )

    def denoiser_feeds(
        self,
        sample: np.ndarray,
        timestep: np.ndarray,
        text: np.ndarray,
        control: np.ndarray,
        conditioning_scale: float,
        guidance_scale: float,
    ) -> dict[str, np.ndarray]:
        """The denoiser's feeds; the guidance scale is fed (once per batch row) only to a guidance-embedded one."""
        values = [sample, timestep, text, control, np.asarray(conditioning_scale, np.float32)]
        if self.guidance_embedded:
            values.append(np.full((sample.shape[0],), guidance_scale, np.float32))
        return dict(zip(self.inputs("denoiser"), values, strict=True))
