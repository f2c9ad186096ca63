"""The consistency-distillation pieces against diffusers' own sampling-time implementations."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, LCMScheduler, StableDiffusionControlNetPipeline

from refine_control.models.denoiser import guidance_embedding
from refine_control.training.consistency import (
    DDIMSolver,
    boundary_scalings,
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


def test_the_guidance_input_starts_as_a_no_op_and_the_pipeline_samples_without_cfg(tiny_pipeline_dir):
    from diffusers import LCMScheduler

    from refine_control.models.denoiser import ControlledDenoiser, with_guidance_input

    pipe = StableDiffusionControlNetPipeline.from_pretrained(tiny_pipeline_dir)
    guided = with_guidance_input(pipe.unet, dim=16)
    assert guided.config.time_cond_proj_dim == 16 and pipe.unet.config.time_cond_proj_dim is None
    args = (torch.randn(2, 4, 8, 8), torch.tensor([10, 900]), torch.randn(2, 5, 32), torch.rand(2, 3, 16, 16))
    plain = ControlledDenoiser(pipe.unet, pipe.controlnet)(*args)
    with_scale = ControlledDenoiser(guided, pipe.controlnet)(*args, 1.0, torch.tensor([3.0, 7.0]))
    assert torch.allclose(plain, with_scale, atol=1e-6)
    with pytest.raises(ValueError, match="pass `guidance_scale`"):
        ControlledDenoiser(guided, pipe.controlnet)(*args)
    # diffusers' pipeline embeds the scale itself and runs one batch per step (no unconditional pass).
    pipe.unet, pipe.scheduler = guided, LCMScheduler.from_config(pipe.scheduler.config)
    image = pipe("a red square", image=torch.rand(1, 3, 16, 16), num_inference_steps=2, guidance_scale=3.0,
                 height=16, width=16, output_type="np").images  # fmt: skip
    assert image.shape == (1, 16, 16, 3) and not pipe.do_classifier_free_guidance


def test_a_consistency_step_is_finite_and_trains_the_student_only(tiny_pipeline_dir):
    import copy

    from refine_control.models.denoiser import ControlledDenoiser, with_guidance_input
    from refine_control.training.consistency import ConsistencyDistillation, consistency_batch

    pipe = StableDiffusionControlNetPipeline.from_pretrained(tiny_pipeline_dir)
    teacher = ControlledDenoiser(pipe.unet, pipe.controlnet).requires_grad_(False)
    student = ControlledDenoiser(with_guidance_input(copy.deepcopy(pipe.unet), 16), copy.deepcopy(pipe.controlnet))
    target = copy.deepcopy(student).requires_grad_(False)
    solver = DDIMSolver(DDIMScheduler().alphas_cumprod, steps=10)
    g = torch.Generator().manual_seed(0)
    batch = consistency_batch(
        teacher, target, solver, "epsilon", torch.randn(3, 4, 8, 8), torch.randn(3, 5, 32), torch.zeros(5, 32),
        torch.rand(3, 3, 16, 16), (2.0, 5.0), g,
    )  # fmt: skip
    assert set(batch.timestep.tolist()) <= set(solver.timesteps().tolist())
    assert ((batch.guidance_scale >= 2) & (batch.guidance_scale <= 5)).all()
    loss = ConsistencyDistillation(student, solver.alphas, "epsilon")(batch).total
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert student.unet.time_embedding.cond_proj.weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters()) and all(p.grad is None for p in target.parameters())


def test_a_guidance_embedded_denoiser_costs_one_pass_and_a_little_more(tiny_pipeline_dir):
    from refine_control.models.cost import denoiser_macs
    from refine_control.models.denoiser import with_guidance_input

    pipe = StableDiffusionControlNetPipeline.from_pretrained(tiny_pipeline_dir)
    plain = denoiser_macs(pipe.unet, pipe.controlnet, 16, 2)
    guided = denoiser_macs(with_guidance_input(pipe.unet, 16), pipe.controlnet, 16, 2)
    assert guided == plain + 16 * pipe.unet.config.block_out_channels[0]  # the 16 → 16 guidance projection
