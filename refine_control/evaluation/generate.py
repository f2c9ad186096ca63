"""Sampling for evaluation: every model gets the same prompts, controls and initial noise."""

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import diffusers
import numpy as np
import torch
from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

from refine_control.errors import ConfigError
from refine_control.serve.runtime.sampling import SAMPLING_FILE, SamplingRecommendation

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sampling:
    """Sampler settings shared by every model in one evaluation."""

    steps: int = 20
    guidance_scale: float = 3.0
    batch_size: int = 32


def read_recommendation(pipeline_dir: str | Path) -> SamplingRecommendation | None:
    """The sampling recommendation a pipeline dir holds (`sampling.json`), or None for a dir without one."""
    path = Path(pipeline_dir) / SAMPLING_FILE
    if not path.is_file():
        return None
    try:
        return SamplingRecommendation.from_json(json.loads(path.read_text("utf-8")))
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path} is not a valid sampling file ({err})") from err


def recommended_sampling(pipeline_dir: str | Path) -> Sampling | None:
    """The steps and guidance scale a pipeline dir recommends (`sampling.json`), or None."""
    own = read_recommendation(pipeline_dir)
    return None if own is None else Sampling(own.steps, own.guidance_scale)


def load_pipeline(path: str | Path, controlnet: str | Path | None = None) -> StableDiffusionControlNetPipeline:
    """A `StableDiffusionControlNetPipeline` in fp32 from a local directory (optionally with another ControlNet)."""
    # A student's model_index.json names this module as its ControlNet's library; diffusers looks the class up in
    # the already-imported module and never imports a module a repository names.
    import refine_control.models.student  # noqa: F401

    path = Path(path)
    if not (path / "model_index.json").is_file():
        raise ConfigError(f"{path} is not a diffusers pipeline directory (no model_index.json)")
    extra = {}
    if not logger.isEnabledFor(logging.INFO):
        diffusers.utils.logging.disable_progress_bar()  # no per-component loading bars in quiet mode
    try:
        if controlnet is not None:
            extra["controlnet"] = ControlNetModel.from_pretrained(
                controlnet, dtype=torch.float32, local_files_only=True
            )
        pipeline = StableDiffusionControlNetPipeline.from_pretrained(
            path, dtype=torch.float32, local_files_only=True, safety_checker=None, requires_safety_checker=False,
            **extra,
        )  # fmt: skip
    except Exception as err:  # diffusers, transformers and safetensors raise many types for a broken dir
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"could not load a ControlNet pipeline from {path}: {first}") from err
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def initial_noise(pipeline: StableDiffusionControlNetPipeline, n: int, resolution: int, seed: int) -> torch.Tensor:
    """(n, C, h, w) initial latents, one seeded generator per sample: sample i is the same for every model and
    every batch size."""
    factor = pipeline.vae_scale_factor
    shape = (pipeline.unet.config.in_channels, resolution // factor, resolution // factor)
    return torch.stack(
        [torch.randn(shape, generator=torch.Generator().manual_seed(seed * 100_003 + i)) for i in range(n)]
    )


@torch.no_grad()
def generate(
    pipeline: StableDiffusionControlNetPipeline,
    prompts: list[str],
    controls: np.ndarray,
    latents: torch.Tensor,
    sampling: Sampling,
) -> np.ndarray:
    """Images (N, H, W, 3) uint8 for prompts, controls (N, H, W, 3) float32 in [0, 1] and fixed initial latents."""
    if not len(prompts) == len(controls) == len(latents):
        raise ValueError(f"got {len(prompts)} prompts, {len(controls)} controls and {len(latents)} latents")
    height, width = controls.shape[1:3]
    out = []
    for start in range(0, len(prompts), sampling.batch_size):
        stop = start + sampling.batch_size
        control = torch.from_numpy(np.ascontiguousarray(controls[start:stop])).permute(0, 3, 1, 2).float()
        result = pipeline(
            prompt=prompts[start:stop],
            image=control,
            latents=latents[start:stop].clone(),
            height=height,
            width=width,
            num_inference_steps=sampling.steps,
            guidance_scale=sampling.guidance_scale,
            output_type="np",
        )
        out.append((np.clip(result.images, 0, 1) * 255).round().astype(np.uint8))
        logger.debug("generated %d/%d", min(stop, len(prompts)), len(prompts))
    return np.concatenate(out)
