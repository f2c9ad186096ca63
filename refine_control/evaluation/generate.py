"""Sampling for evaluation: every model gets the same prompts, controls and initial noise."""

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from diffusers import StableDiffusionControlNetPipeline

from refine_control.errors import ConfigError
from refine_control.models.pipeline_dir import read_recommendation, schedule_kwargs

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sampling:
    """Sampler settings shared by every model in one evaluation."""

    steps: int = 20
    guidance_scale: float = 3.0
    batch_size: int = 32
    timesteps: tuple[int, ...] | None = None  # descending; None: the scheduler's own choice for `steps`


def model_sampling(
    pipeline_dir: str | Path,
    steps: int | None,
    guidance_scale: float | None,
    first_timestep: int | None,
    fallback: Sampling,
) -> Sampling:
    """How to sample a pipeline dir: the steps, scale and (LCM) first timestep given, else its recommendation
    (`sampling.json`), else `fallback`'s."""
    own = read_recommendation(pipeline_dir)
    if first_timestep is not None:
        if own is None or own.scheduler != "LCMScheduler":
            raise ConfigError(f"`--first-timestep` applies to a few-step (LCM) student; {pipeline_dir} is not one")
        try:
            own = replace(own, first_timestep=first_timestep)
        except ValueError as err:
            raise ConfigError(f"`--first-timestep`: {err}") from err
    if own is None:
        return replace(
            fallback,
            steps=steps or fallback.steps,
            guidance_scale=fallback.guidance_scale if guidance_scale is None else guidance_scale,
        )
    steps = steps or own.steps
    timesteps = None
    if own.first_timestep is not None:  # ConfigError: more steps than the grid has below the start
        config = json.loads((Path(pipeline_dir) / "scheduler" / "scheduler_config.json").read_text())
        timesteps = own.timesteps(config, steps)
    return Sampling(
        steps,
        own.guidance_scale if guidance_scale is None else guidance_scale,
        fallback.batch_size,
        None if timesteps is None else tuple(timesteps),
    )


def initial_noise(pipeline: StableDiffusionControlNetPipeline, n: int, resolution: int, seed: int) -> torch.Tensor:
    """(n, C, h, w) initial latents, one seeded generator per sample: sample i is the same for every model and
    every batch size."""
    factor = pipeline.vae_scale_factor
    shape = (pipeline.unet.config.in_channels, resolution // factor, resolution // factor)
    return torch.stack(
        [torch.randn(shape, generator=torch.Generator().manual_seed(seed * 100_003 + i)) for i in range(n)]
    )


def step_noise_generators(seed: int, start: int, stop: int) -> list[torch.Generator]:
    """One generator per sample for the noise a sampler draws between steps (LCM's multistep sampling does; DDIM
    with eta 0 draws none): sample i's draws depend on the seed and i only, never on the global generator or the
    batch. A stream of its own, apart from the initial noise's."""
    states = [np.random.SeedSequence([seed, i, 1]).generate_state(1)[0] for i in range(start, stop)]
    return [torch.Generator().manual_seed(int(state)) for state in states]


@torch.no_grad()
def generate(
    pipeline: StableDiffusionControlNetPipeline,
    prompts: list[str],
    controls: np.ndarray,
    latents: torch.Tensor,
    sampling: Sampling,
    seed: int = 0,
) -> np.ndarray:
    """Images (N, H, W, 3) uint8 for prompts, controls (N, H, W, 3) float32 in [0, 1] and fixed initial latents;
    whatever the sampler draws between steps comes from `seed` (`step_noise_generators`)."""
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
            generator=step_noise_generators(seed, start, min(stop, len(prompts))),
            height=height,
            width=width,
            **schedule_kwargs(sampling.steps, sampling.timesteps),
            guidance_scale=sampling.guidance_scale,
            output_type="np",
        )
        out.append((np.clip(result.images, 0, 1) * 255).round().astype(np.uint8))
        logger.debug("generated %d/%d", min(stop, len(prompts)), len(prompts))
    return np.concatenate(out)
