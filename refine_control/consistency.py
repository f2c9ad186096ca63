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

SIGMA_DATA = 0.5
TIMESTEP_SCALING = 10.0  # LCMScheduler's default


def guidance_embedding(w: torch.Tensor, dim: int) -> torch.Tensor:
    """(B,) guidance scales minus one → (B, dim) sinusoidal embedding, as the ControlNet pipeline computes it."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -(torch.log(torch.tensor(10000.0)) / (half - 1)))
    angles = (w.float() * 1000.0)[:, None] * freqs.to(w.device)[None, :]
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    return torch.nn.functional.pad(emb, (0, 1)) if dim % 2 else emb


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
