"""The data model and two-layer ReLU CNN of "Towards Understanding Feature Learning in Parameter Transfer".

Paper: Yuan, Meng, Wang, Xia, Xu, Yang, Wang, Geng, Rui (arXiv 2509.22056). Confirmed from reviews of the
paper: a shared signal u appears in both tasks, task-specific signals v₁ (upstream) and v₂ (downstream), u ⟂ v_k,
Gaussian noise with covariance σ_p,k² (I − ûûᵀ − v̂_k v̂_kᵀ); a random α-fraction of the upstream filters is
inherited and everything is fine-tuned. Reconstructed after Kou et al. (ICML 2023), which this line of work
builds on (spec §1.3–1.5, gaps P1-a…P1-f): two patches x = [ỹ(u + v_k), ξ], labels ỹ ∈ {±1} optionally flipped
with probability p, and

    f(W, x) = F₊₁(W₊₁, x) − F₋₁(W₋₁, x),   F_j = (1/m) Σ_r Σ_p ReLU(⟨w_{j,r}, x_p⟩)

trained by full-batch gradient descent on the logistic loss from w ~ N(0, σ₀² I). The two filter banks are
separate parameters (`w_pos`, `w_neg`, each (m, d)) so `transfer_parameters(..., exact=True)` inherits
round(αm) filters per class, labels aligned across tasks.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class TwoLayerReLUCNN(nn.Module):
    """m filters per class shared across patches; the second layer is fixed to ±1/m (not trained)."""

    def __init__(self, dim: int, filters: int, init_std: float, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.w_pos = nn.Parameter(torch.randn(filters, dim, generator=generator) * init_std)
        self.w_neg = nn.Parameter(torch.randn(filters, dim, generator=generator) * init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, P, d) patches → (N,) real-valued output f(W, x); predict with its sign."""
        pos = F.relu(x @ self.w_pos.T).sum(1).mean(1)
        neg = F.relu(x @ self.w_neg.T).sum(1).mean(1)
        return pos - neg


@dataclass(frozen=True)
class SignalDirections:
    u: torch.Tensor  # shared signal (d,)
    v1: torch.Tensor  # upstream-specific (d,)
    v2: torch.Tensor  # downstream-specific (d,)


def make_directions(
    dim: int, *, shared: float, upstream: float, downstream: float, generator: torch.Generator | None = None
) -> SignalDirections:
    """Mutually orthogonal u, v₁, v₂ (QR of a Gaussian d×3 matrix) scaled to the given norms."""
    if dim < 3:
        raise ValueError(f"the data model needs d ≥ 3, got {dim}")
    q, _ = torch.linalg.qr(torch.randn(dim, 3, generator=generator))
    return SignalDirections(q[:, 0] * shared, q[:, 1] * upstream, q[:, 2] * downstream)


def _unit(v: torch.Tensor) -> torch.Tensor | None:
    n = v.norm()
    return v / n if n > 0 else None


def sample_task(
    n: int,
    shared: torch.Tensor,
    specific: torch.Tensor,
    *,
    noise_std: float,
    flip: float = 0.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n samples [ỹ(u + v), ξ] with ξ ~ σ_p N(0, I) with û and v̂ projected out.

    Returns (x (n, 2, d), y observed labels ±1 (n,), y_clean (n,)).
    """
    dim = shared.numel()
    y_clean = torch.randint(0, 2, (n,), generator=generator).float() * 2 - 1
    noise = torch.randn(n, dim, generator=generator) * noise_std
    for direction in (_unit(shared), _unit(specific)):
        if direction is not None:
            noise -= (noise @ direction)[:, None] * direction[None, :]
    signal = y_clean[:, None] * (shared + specific)[None, :]
    y = torch.where(torch.rand(n, generator=generator) < flip, -y_clean, y_clean)
    return torch.stack([signal, noise], 1), y, y_clean


@dataclass(frozen=True)
class GDConfig:
    lr: float = 0.1  # η
    steps: int = 300  # T


def train_gd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: GDConfig) -> float:
    """Full-batch gradient descent on mean log(1 + exp(−y f(x))); returns the final training loss."""
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    loss = torch.tensor(float("nan"))
    for _ in range(cfg.steps):
        loss = F.softplus(-y * model(x)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return float(loss.detach())


@torch.no_grad()
def sign_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return (torch.sign(model(x)) == y).float().mean().item()
