"""The runtime's numpy schedulers step for step against diffusers' on the same inputs (and the same noise)."""

import itertools

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
    PNDMScheduler,
)

from refine_control.errors import ConfigError
from refine_control.runtime.sampling import SamplingRecommendation
from refine_control.runtime.schedulers import SCHEDULERS, lcm_start_timestep, make_scheduler, scheduler_key

CASES = [
    (DDIMScheduler, "ddim"),
    (EulerDiscreteScheduler, "euler"),
    (EulerAncestralDiscreteScheduler, "euler_ancestral"),
    (LCMScheduler, "lcm"),
]


def _compare(ref, mine, steps: int | None, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch) -> float:
    """Run both schedulers over the same model outputs and noise; the worst error relative to the sample scale.
    `steps=None`: both have their timesteps set already."""
    import sys

    if steps is not None:
        ref.set_timesteps(steps)
        mine.set_timesteps(steps)
    np.testing.assert_allclose(mine.timesteps, ref.timesteps.numpy().astype(np.float32), rtol=1e-6, atol=1e-4)
    assert mine.init_noise_sigma == pytest.approx(float(ref.init_noise_sigma), rel=1e-5)
    x0 = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    ours, theirs = x0 * np.float32(mine.init_noise_sigma), torch.from_numpy(x0) * ref.init_noise_sigma
    module = sys.modules[type(ref).__module__]
    worst = 0.0
    for i, t in enumerate(ref.timesteps):
        scaled = ref.scale_model_input(theirs, t).numpy()
        scale_in = max(1.0, float(np.abs(scaled).max()))
        worst = max(worst, float(np.abs(mine.scale_model_input(ours, i) - scaled).max()) / scale_in)
        model_output = rng.standard_normal(x0.shape).astype(np.float32)
        noise = rng.standard_normal(x0.shape).astype(np.float32)
        if hasattr(module, "randn_tensor"):
            monkeypatch.setattr(module, "randn_tensor", lambda *a, n=noise, **k: torch.from_numpy(n.copy()))
        theirs = ref.step(torch.from_numpy(model_output), t, theirs).prev_sample
        ours = mine.step(model_output, i, ours, noise=noise)
        scale = max(1.0, float(np.abs(theirs.numpy()).max()), scale_in)
        worst = max(worst, float(np.abs(theirs.numpy() - ours).max()) / scale)
    return worst


@pytest.mark.parametrize(("cls", "key"), CASES, ids=[key for _, key in CASES])
def test_schedulers_equal_diffusers(cls, key: str, monkeypatch: pytest.MonkeyPatch):
    rng = np.random.default_rng(0)
    options = itertools.product(
        ["linear", "scaled_linear"], ["leading", "trailing", "linspace"], ["epsilon", "v_prediction"], [1, 4, 13]
    )
    for schedule, spacing, prediction, steps in options:
        kwargs = {"beta_schedule": schedule, "timestep_spacing": spacing, "prediction_type": prediction}
        if cls in (DDIMScheduler, LCMScheduler):
            kwargs.update(clip_sample=False, set_alpha_to_one=False, steps_offset=1)
        ref = cls(**kwargs)
        mine = make_scheduler(dict(ref.config), key)
        assert _compare(ref, mine, steps, rng, monkeypatch) < 1e-4, (schedule, spacing, prediction, steps)


def test_ddim_cosine_schedule_and_clipping(monkeypatch: pytest.MonkeyPatch):
    ref = DDIMScheduler(beta_schedule="squaredcos_cap_v2", clip_sample=True, rescale_betas_zero_snr=True)
    mine = make_scheduler({"_class_name": "DDIMScheduler", **dict(ref.config)})
    assert mine.name == "DDIMScheduler"
    assert _compare(ref, mine, 5, np.random.default_rng(1), monkeypatch) < 1e-4


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear"])
def test_lcm_from_a_recommended_first_timestep_equals_diffusers_custom_timesteps(schedule, monkeypatch):
    """What the runtime samples from a few-step student's `first_timestep` is what evaluation and the parity run
    hand diffusers as `timesteps=`."""
    betas = {"linear": (0.0001, 0.02), "scaled_linear": (0.00085, 0.012)}[schedule]  # the built-in's; SD1.5's
    ref = LCMScheduler(
        beta_schedule=schedule, beta_start=betas[0], beta_end=betas[1], clip_sample=False, set_alpha_to_one=False
    )
    config = {"_class_name": "LCMScheduler", **dict(ref.config)}
    start = lcm_start_timestep(config)
    assert start == {"linear": 759, "scaled_linear": 999}[schedule]  # √ᾱ ≥ 0.05: 0.054 at 759; SD's 999 has 0.068
    rec = SamplingRecommendation(2, 3.0, "LCMScheduler", (2.0, 5.0), first_timestep=start)
    assert SamplingRecommendation.from_json(rec.to_json()) == rec
    for steps in (1, 2, 3, 4):
        timesteps = rec.timesteps(config, steps)
        assert timesteps[0] == start and timesteps == sorted(timesteps, reverse=True) and len(timesteps) == steps
        ref.set_timesteps(timesteps=timesteps)
        mine = make_scheduler(config)
        mine.set_timesteps(steps, start)
        assert _compare(ref, mine, None, np.random.default_rng(steps), monkeypatch) < 1e-4
    assert rec.timesteps(config, 2) == ([759, 379] if schedule == "linear" else [999, 499])
    assert SamplingRecommendation(4, 3.0, "LCMScheduler").timesteps(config, 4) is None  # LCM's own spacing
    with pytest.raises(ConfigError, match="steps"):
        mine.set_timesteps(51, start)  # more steps than grid timesteps at or below the start


def test_a_first_timestep_belongs_to_an_lcm_recommendation():
    with pytest.raises(ValueError, match="LCMScheduler only"):
        SamplingRecommendation(20, 3.0, "DDIMScheduler", first_timestep=759)
    with pytest.raises(ValueError, match=r"0\.\.999"):
        SamplingRecommendation(2, 3.0, "LCMScheduler", first_timestep=1000)


def test_every_scheduler_maps_to_its_diffusers_class():
    for key, cls in SCHEDULERS.items():
        assert scheduler_key(cls.name) == key


def test_unsupported_scheduler_settings_are_refused():
    with pytest.raises(ConfigError, match="no numpy implementation"):
        make_scheduler(dict(PNDMScheduler().config, _class_name="PNDMScheduler"))
    with pytest.raises(ConfigError, match="use_karras_sigmas"):
        make_scheduler(dict(EulerDiscreteScheduler(use_karras_sigmas=True).config), "euler")
    with pytest.raises(ConfigError, match="thresholding"):
        make_scheduler(dict(DDIMScheduler(thresholding=True).config), "ddim")
    with pytest.raises(ConfigError, match="unknown scheduler"):
        make_scheduler({}, "heun")
