"""Evaluation sampling repeats exactly: LCM draws fresh noise between steps, and that noise is seeded per sample."""

import numpy as np
import torch
from diffusers import LCMScheduler, StableDiffusionControlNetPipeline

from refine_control.evaluation.generate import Sampling, generate, initial_noise


def test_lcm_images_repeat_whatever_ran_before_and_whatever_the_batch_size(tiny_pipeline_dir):
    pipe = StableDiffusionControlNetPipeline.from_pretrained(tiny_pipeline_dir)
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    prompts = ["a red square", "a blue circle", "a green star"]
    controls = np.random.default_rng(0).random((3, 16, 16, 3), dtype=np.float32)
    latents = initial_noise(pipe, 3, 16, seed=0)

    def images(batch_size: int, seed: int = 0) -> np.ndarray:
        torch.manual_seed(np.random.default_rng().integers(1 << 31))  # what ran before must not matter
        return generate(pipe, prompts, controls, latents, Sampling(4, 1.0, batch_size), seed)

    first = images(3)
    assert np.array_equal(first, images(3)) and np.array_equal(first, images(2))
    assert not np.array_equal(first, images(3, seed=1))  # the step noise is drawn and follows the seed
