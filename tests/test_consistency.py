"""The consistency-distillation pieces against diffusers' own sampling-time implementations."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, LCMScheduler, StableDiffusionControlNetPipeline

from refine_control.consistency import (
    DDIMSolver,
    boundary_scalings,
    guidance_embedding,
    huber,
    predicted_noise,
    predicted_x0,
)


@pytest.mark.parametrize("dim", [32, 33])
def test_guidance_embedding_matches_the_controlnet_pipeline(dim):
    w = torch.tensor([0.0, 2.0, 7.5])
    expected = StableDiffusionControlNetPipeline.get_guidance_scale_embedding(None, w, embedding_dim=dim)
    assert torch.allclose(guidance_embedding(w, dim), expected, atol=1e-5)


def test_boundary_scalings_match_the_lcm_scheduler():
    scheduler = LCMScheduler()
    t = torch.tensor([0, 19, 499, 999])
    c_skip, c_out = boundary_scalings(t)
    for i, step in enumerate(t.tolist()):
        skip, out = scheduler.get_scalings_for_boundary_condition_discrete(step)
        assert c_skip[i].item() == pytest.approx(skip) and c_out[i].item() == pytest.approx(out)
    assert c_skip[0] == 1 and c_out[0] == 0  # f(x, 0) = x


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_predictions_convert_between_parameterisations(kind):
    alphas = DDIMScheduler().alphas_cumprod
    t = torch.tensor([10, 500, 990])
    x0, eps = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    a = alphas[t].view(-1, 1, 1, 1)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
    output = {"epsilon": eps, "v_prediction": a.sqrt() * eps - (1 - a).sqrt() * x0, "sample": x0}[kind]
    assert torch.allclose(predicted_x0(output, t, xt, alphas, kind), x0, atol=1e-4)
    assert torch.allclose(predicted_noise(output, t, xt, alphas, kind), eps, atol=1e-3)


def test_ddim_solver_step_matches_the_ddim_scheduler():
    scheduler = DDIMScheduler(set_alpha_to_one=False, clip_sample=False)
    solver = DDIMSolver(scheduler.alphas_cumprod, steps=50)
    grid = solver.timesteps()
    assert grid[0] == 19 and grid[-1] == 999 and len(grid) == 50
    scheduler.set_timesteps(50)  # the same grid, descending; `step` goes from t to t − 20
    sample, eps = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    t = torch.tensor([499])
    x0 = predicted_x0(eps, t, sample, scheduler.alphas_cumprod, "epsilon")
    expected = scheduler.step(eps, 499, sample, eta=0.0).prev_sample
    assert torch.allclose(solver.step(x0, eps, t), expected, atol=1e-5)
    assert solver.previous(torch.tensor([19, 5])).tolist() == [0, 0]


def test_huber_is_quadratic_near_zero_and_linear_far_away():
    zero = torch.zeros(4)
    assert huber(zero, zero).item() == 0
    assert huber(torch.full((4,), 1e-5), zero).item() == pytest.approx(0.5 * 1e-10 / 1e-3, rel=1e-2)
    assert huber(torch.full((4,), 10.0), zero).item() == pytest.approx(10 - 1e-3, rel=1e-6)
    assert np.isfinite(huber(torch.randn(3), torch.randn(3)).item())
