"""Partial-label learning pieces: the unreliable candidate-set generator and the PRODEN / CC / RC baselines.

Paper: "Unreliable Partial Label Learning with Recursive Separation" (Shi, Xu, Yuan, Geng; IJCAI 2023). The
generator follows the public code of the same group (symmetric noise with rate μ, then every class joins the
set independently with probability η); the baselines are the standard losses it compares against:

- CC  (Feng et al. 2020, classifier-consistent): −log Σ_{j∈S} p_j.
- PRODEN (Lv et al. 2020): −Σ_j w_j log p_j, w re-estimated per batch as p restricted to S, renormalised.
- RC  (Feng et al. 2020, risk-consistent): same loss form; here the confidence table is re-estimated once per
  epoch by an eval-mode pass over the training set (our reconstruction: the two differ mainly in when and from
  which forward pass w is refreshed; the spec leaves this open).
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from refine_control.weaklabel.augment import weak_view
from refine_control.weaklabel.datasets import Split
from refine_control.weaklabel.training import FitConfig, FitResult, fit, predict_logits

logger = logging.getLogger(__name__)

PLL_METHODS = ("cc", "proden", "rc")


@dataclass(frozen=True)
class CandidateSets:
    """Candidate sets as a (N, K) bool mask; `reliable[i]` says whether the true label is in S_i.

    `reliable` is ground truth for diagnostics only; no learner reads it.
    """

    mask: torch.Tensor
    reliable: torch.Tensor

    @property
    def unreliable_rate(self) -> float:
        return 1.0 - self.reliable.float().mean().item()

    @property
    def mean_size(self) -> float:
        return self.mask.sum(1).float().mean().item()


def generate_unreliable_candidates(
    y: torch.Tensor, num_classes: int, *, eta: float, mu: float, generator: torch.Generator | None = None
) -> CandidateSets:
    """UPLLRS generator: anchor = y with prob 1−μ else a uniform wrong label; then add each class w.p. η.

    The true label can re-enter through the Bernoulli step, so the realised unreliable rate is μ(1−η) and the
    expected set size is 1 + η(K−1) (up to the anchor itself being re-drawn).
    """
    if not (0.0 <= eta <= 1.0 and 0.0 <= mu <= 1.0):
        raise ValueError(f"`eta` and `mu` must be in [0, 1], got eta={eta}, mu={mu}")
    if num_classes < 2:
        raise ValueError(f"need at least 2 classes, got {num_classes}")
    n = len(y)
    flip = torch.rand(n, generator=generator) < mu
    offset = torch.randint(1, num_classes, (n,), generator=generator)  # uniform over the K−1 wrong labels
    anchor = torch.where(flip, (y + offset) % num_classes, y)
    mask = torch.rand(n, num_classes, generator=generator) < eta
    mask[torch.arange(n), anchor] = True
    reliable = mask[torch.arange(n), y]
    return CandidateSets(mask, reliable)


def uniform_confidence(mask: torch.Tensor) -> torch.Tensor:
    """w_ij = 1/|S_i| on the candidates (UPLLRS appendix Eq. 12), 0 elsewhere."""
    m = mask.float()
    return m / m.sum(1, keepdim=True).clamp_min(1.0)


def cc_loss(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """−log Σ_{j∈S} softmax(logits)_j, averaged over the batch. Also the top-k partial loss of soft labels."""
    masked = logits.masked_fill(~mask, float("-inf"))
    return (torch.logsumexp(logits, 1) - torch.logsumexp(masked, 1)).mean()


def weighted_ce(logits: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """−Σ_j w_j log softmax(logits)_j, averaged over the batch (PRODEN / RC loss, soft-label CE)."""
    return -(weights * F.log_softmax(logits, 1)).sum(1).mean()


def renormalised_on_candidates(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """p restricted to S and renormalised: the PRODEN / RC confidence update (detached)."""
    p = F.softmax(logits.detach(), 1) * mask.float()
    return p / p.sum(1, keepdim=True).clamp_min(1e-12)


def train_pll(
    method: str,
    model: nn.Module,
    x: torch.Tensor,
    mask: torch.Tensor,
    val: Split | None,
    cfg: FitConfig,
    generator: torch.Generator | None = None,
    *,
    augment: Callable[[torch.Tensor, torch.Generator | None], torch.Tensor] | None = weak_view,
) -> FitResult:
    """Train `model` on candidate sets `mask` with one of PLL_METHODS (all on the full, corrupted set)."""
    if method not in PLL_METHODS:
        raise ValueError(f"unknown PLL method {method!r}; choose one of: {', '.join(PLL_METHODS)}")
    conf = uniform_confidence(mask)

    def view(idx: torch.Tensor) -> torch.Tensor:
        return augment(x[idx], generator) if augment is not None else x[idx]

    def step(idx: torch.Tensor) -> torch.Tensor:
        logits = model(view(idx))
        if method == "cc":
            return cc_loss(logits, mask[idx])
        loss = weighted_ce(logits, conf[idx])
        if method == "proden":
            conf[idx] = renormalised_on_candidates(logits, mask[idx])
        return loss

    def refresh(_epoch: int) -> None:
        if method == "rc":
            conf.copy_(renormalised_on_candidates(predict_logits(model, x), mask))

    return fit(model, len(x), step, val, cfg, generator, on_epoch_end=refresh)
