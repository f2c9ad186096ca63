"""Latent consistency distillation (LCD) with classifier-free guidance folded in: the few-step stage.

Following "Latent Consistency Models" (arXiv 2310.04378) and diffusers' LCM training recipe, adapted to a ControlNet
student trained as a whole (UNet and ControlNet together: a ControlNet trained for the base model loses detail on a
consistency model, CCM, arXiv 2312.06971):

- the student is a consistency function f(x_t, t, c, w) = c_skip(t)·x_t + c_out(t)·x̂₀(x_t, t, c, w), whose UNet
  also reads the guidance scale w through a sinusoidal embedding (`time_cond_proj_dim`), so one batch-1 pass
  replaces the pair of classifier-free guidance;
- the target is one DDIM step of the teacher with guidance (1 + w)·ε_cond − w·ε_uncond from t to t − k, evaluated
  by an exponential moving average of the student (the target network): L = huber(f_θ(x_t, t), f_θ⁻(x̂_{t−k}, t − k)).

The boundary scalings and the guidance embedding are the ones diffusers' `LCMScheduler` and ControlNet pipeline use
at sampling time, so the trained student samples with the stock pipeline and scheduler.
"""

from dataclasses import dataclass

import torch
from torch import nn

from refine_control.losses import LossOutput
from refine_control.models.denoiser import ControlledDenoiser

SIGMA_DATA = 0.5
TIMESTEP_SCALING = 10.0  # LCMScheduler's default


def boundary_scalings(
    t: torch.Tensor, timestep_scaling: float = TIMESTEP_SCALING
) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_skip, c_out) of the consistency function at timesteps `t`: f = x_t at t = 0."""
    scaled = t.float() * timestep_scaling
    c_skip = SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2)
    c_out = scaled / (scaled**2 + SIGMA_DATA**2) ** 0.5
    return c_skip, c_out


def predicted_x0(model_output: torch.Tensor, t: torch.Tensor, sample: torch.Tensor, alphas: torch.Tensor, kind: str):
    """x̂₀ from an ε-, v- or x₀-prediction at timesteps `t` (alphas: the schedule's cumulative products)."""
    a = alphas[t].view(-1, 1, 1, 1).to(sample)
    if kind == "epsilon":
        return (sample - (1 - a).sqrt() * model_output) / a.sqrt()
    if kind == "v_prediction":
        return a.sqrt() * sample - (1 - a).sqrt() * model_output
    return model_output


def predicted_noise(
    model_output: torch.Tensor, t: torch.Tensor, sample: torch.Tensor, alphas: torch.Tensor, kind: str
):
    """ε̂ from an ε-, v- or x₀-prediction at timesteps `t`."""
    a = alphas[t].view(-1, 1, 1, 1).to(sample)
    if kind == "epsilon":
        return model_output
    if kind == "v_prediction":
        return a.sqrt() * model_output + (1 - a).sqrt() * sample
    return (sample - a.sqrt() * model_output) / (1 - a).sqrt()


@dataclass(frozen=True)
class DDIMSolver:
    """The teacher's ODE solver on a grid of `steps` DDIM timesteps (every k = T / steps training timesteps)."""

    alphas: torch.Tensor  # (T,) cumulative products of the training schedule
    steps: int = 50

    @property
    def skip(self) -> int:
        return len(self.alphas) // self.steps

    def timesteps(self) -> torch.Tensor:
        """The grid, ascending: k − 1, 2k − 1, ..., T − 1."""
        return torch.arange(1, self.steps + 1) * self.skip - 1

    def step(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_{t−k} from the (guided) predictions at t: the deterministic DDIM update (t − k clamped at 0)."""
        a_prev = self.alphas[self.previous(t)].view(-1, 1, 1, 1).to(x0)
        return a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * noise

    def previous(self, t: torch.Tensor) -> torch.Tensor:
        return (t - self.skip).clamp(min=0)


def huber(a: torch.Tensor, b: torch.Tensor, c: float = 1e-3) -> torch.Tensor:
    """Pseudo-Huber loss, element-wise then averaged: sqrt((a − b)² + c²) − c."""
    return (torch.sqrt((a.float() - b.float()) ** 2 + c**2) - c).mean()


@dataclass
class ConsistencyBatch:
    """One LCD batch: x_t on the solver grid, its timesteps, the guidance scales (1 + w), the conditions, and the
    target f_θ⁻(x̂_{t−k}, t − k) of the target network after one guided teacher step."""

    sample: torch.Tensor
    timestep: torch.Tensor
    encoder_hidden_states: torch.Tensor
    controlnet_cond: torch.Tensor
    guidance_scale: torch.Tensor
    target: torch.Tensor


def consistency_output(
    denoiser: ControlledDenoiser,
    sample: torch.Tensor,
    t: torch.Tensor,
    text: torch.Tensor,
    control: torch.Tensor,
    guidance_scale: torch.Tensor,
    alphas: torch.Tensor,
    kind: str,
) -> torch.Tensor:
    """f(x_t, t) = c_skip(t)·x_t + c_out(t)·x̂₀: the consistency function a guidance-embedded denoiser defines."""
    prediction = denoiser(sample, t, text, control, 1.0, guidance_scale)
    c_skip, c_out = (c.view(-1, 1, 1, 1).to(sample) for c in boundary_scalings(t))
    return c_skip * sample + c_out * predicted_x0(prediction, t, sample, alphas, kind)


@torch.no_grad()
def consistency_batch(
    teacher: ControlledDenoiser,
    target_net: ControlledDenoiser,
    solver: DDIMSolver,
    kind: str,
    latents: torch.Tensor,
    text: torch.Tensor,
    empty_text: torch.Tensor,
    control: torch.Tensor,
    guidance_range: tuple[float, float],
    generator: torch.Generator,
) -> ConsistencyBatch:
    """Noise `latents` to grid timesteps, take one teacher DDIM step with guidance, evaluate the target network."""
    grid = solver.timesteps()
    n = len(latents)
    t = grid[torch.randint(0, len(grid), (n,), generator=generator)].to(latents.device)
    noise = torch.randn(latents.shape, generator=generator, dtype=latents.dtype).to(latents.device)
    low, high = guidance_range
    scale = (torch.rand(n, generator=generator) * (high - low) + low).to(latents.device)
    alphas = solver.alphas.to(latents.device)
    a = alphas[t].view(-1, 1, 1, 1).to(latents)
    noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
    # Teacher with classifier-free guidance at scale s = 1 + w: x̂₀ = x̂₀_c + w·(x̂₀_c − x̂₀_u), the same for ε̂.
    cond = teacher(noisy, t, text, control)
    uncond = teacher(noisy, t, empty_text.expand_as(text), control)
    w = (scale - 1).view(-1, 1, 1, 1).to(latents)
    x0_c, x0_u = predicted_x0(cond, t, noisy, alphas, kind), predicted_x0(uncond, t, noisy, alphas, kind)
    eps_c, eps_u = predicted_noise(cond, t, noisy, alphas, kind), predicted_noise(uncond, t, noisy, alphas, kind)
    previous = solver.step(x0_c + w * (x0_c - x0_u), eps_c + w * (eps_c - eps_u), t)
    tp = solver.previous(t)
    target = consistency_output(target_net, previous, tp, text, control, scale, alphas, kind)
    return ConsistencyBatch(noisy, t, text, control, scale, target)


class ConsistencyDistillation(nn.Module):
    """What trains in the few-step stage: the student; its loss is the pseudo-Huber distance of its consistency
    function at x_t to the target network's at the teacher's next point. (accelerate wraps this module.)"""

    def __init__(self, student: ControlledDenoiser, alphas: torch.Tensor, kind: str) -> None:
        super().__init__()
        self.student = student
        self.register_buffer("alphas", alphas.clone(), persistent=False)
        self.kind = kind

    def forward(self, batch: ConsistencyBatch) -> LossOutput:
        output = consistency_output(
            self.student, batch.sample, batch.timestep, batch.encoder_hidden_states, batch.controlnet_cond,
            batch.guidance_scale, self.alphas, self.kind,
        )  # fmt: skip
        loss = huber(output, batch.target)
        return LossOutput(loss, {"consistency": loss.detach()})
