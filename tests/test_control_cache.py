"""The ControlNet conditioning embedding is computed once per sampling run, with exactly the same images."""

import numpy as np
import torch
from tiny_models import build_tiny_pipeline

from refine_control.models.control_cache import cache_control_embedding


def _live(controlnet):
    """A ControlNet whose zero-initialised convolutions are random, so the control changes the images."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in controlnet.parameters():
            if not param.any():
                param.copy_(torch.randn(param.shape, generator=gen) * 0.2)
    return controlnet


def _sample(pipeline, seed: int = 0) -> np.ndarray:
    control = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
    return pipeline(
        prompt=["a red square", "a blue circle"], image=control, num_inference_steps=4, guidance_scale=3.0,
        height=16, width=16, output_type="np", generator=torch.Generator().manual_seed(seed),
    ).images  # fmt: skip


def test_cached_embedding_gives_the_same_images_and_is_reused_across_steps():
    pipeline = build_tiny_pipeline()
    _live(pipeline.controlnet)
    pipeline.set_progress_bar_config(disable=True)
    before = _sample(pipeline)
    keys = list(pipeline.controlnet.state_dict())
    cache = cache_control_embedding(pipeline.controlnet)
    after = _sample(pipeline)
    np.testing.assert_array_equal(after, before)
    assert cache.hits == 3  # 4 steps: computed once, served 3 times
    plain = build_tiny_pipeline()
    plain.set_progress_bar_config(disable=True)
    assert not np.array_equal(_sample(plain), before), "the control must change the images in this test"
    other = _sample(pipeline, seed=1)  # a new control image is embedded anew
    assert cache.hits == 6 and not np.array_equal(other, after)
    assert list(pipeline.controlnet.state_dict()) == keys
    assert cache_control_embedding(pipeline.controlnet) is cache


def test_no_cache_while_training_or_after_an_in_place_change():
    controlnet = _live(build_tiny_pipeline().controlnet)
    cache = cache_control_embedding(controlnet)
    embedding = controlnet.controlnet_cond_embedding
    cond = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        first = embedding(cond).clone()
        embedding(cond)
        assert cache.hits == 1
        cond.mul_(0.5)  # the same tensor, changed: embedded again
        changed = embedding(cond)
    assert cache.hits == 1 and not torch.equal(first, changed)
    out = embedding(cond)  # gradients on: always computed, nothing kept
    assert out.requires_grad and cache.hits == 1 and cache.input is None
