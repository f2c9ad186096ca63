"""UPLLRS: self-adaptive recursive separation, then PRODEN on the reliable part + FixMatch on the unreliable part.

Paper: "Unreliable Partial Label Learning with Recursive Separation" (Shi, Xu, Yuan, Geng; IJCAI 2023).
What is from the paper or its public code, and what is ours (see docs/weaklabel.md):

- Stage 1 [code]: each step trains a *fresh* network for a few epochs on the current reliable set D_R with the
  average-based candidate loss (1/|S|) Σ_{j∈S} −log p_j, ranks D_R by that loss as recorded during the last
  training epoch, and moves the γ-fraction with the largest loss to D_U. The cap is
  T_max = round(2 ln 0.6 / ln(1−γ)); from step W_s on, validation accuracy feeds an early-stopping monitor
  (patience P_s, a step counts as bad only when strictly below the best). Samples are tracked by index.
  The code starts the monitor at W_s = 6 and keeps every removal, so it can never remove less than
  1 − (1−γ)^(W_s+P_s+1) (46% at γ = 0.05). Ours by default: monitor from step 0 and keep the D_R of the
  best-validation step (`restore_best`), so the removed fraction is chosen by validation and may be 0.
- Stage 2 [code, "general solution"]: PRODEN on D_R (the code puts the loss on a strong view; we use the weak
  view, the same labelled view every baseline gets, so the comparison isolates separation + SSL; confidences
  renormalised on S after each batch) + FixMatch on D_U (pseudo-label from a weak view if max prob ≥ τ, CE on
  a strong view, divided by the full unlabeled batch), total L_R + λ_u L_U with an unlabeled batch μ_u times
  the labeled one.
- Ours: Adam instead of SGD + cosine, no weight EMA, small CNNs, and FixMatch's weak/strong views translated
  to 28×28 grey images (augment.py); the views are passed in, so an MLP can use the pixel-level ones.
"""

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from refine_control.weaklabel.augment import strong_view, weak_view
from refine_control.weaklabel.datasets import Split
from refine_control.weaklabel.partial_label import renormalised_on_candidates, uniform_confidence, weighted_ce
from refine_control.weaklabel.training import FitConfig, FitResult, accuracy, fit, minibatches

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeparationConfig:
    """Stage-1 settings. The defaults are the *restoring* stop rule (see `recursive_separation`); the paper's
    code rule is `warmup_steps=6, restore_best=False`, which can never remove less than 1 − (1−γ)^(W_s+P_s+1)."""

    gamma: float = 0.05  # fraction of the current D_R moved per step (paper: 0.03 on CIFAR-10)
    epochs_per_step: int = 5  # E_s (paper: 5)
    warmup_steps: int = 0  # W_s: steps before the monitor starts (code: 6, i.e. from the 7th step on)
    patience: int = 5  # P_s
    batch_size: int = 128
    lr: float = 1e-3
    max_steps: int | None = None  # None = the adaptive cap round(2 ln 0.6 / ln(1−γ))
    restore_best: bool = True  # end with the D_R the best-validation step was trained on (may be all data)

    def __post_init__(self) -> None:
        if not 0.0 < self.gamma < 1.0:
            raise ValueError(f"`gamma` must be in (0, 1), got {self.gamma}")
        if self.warmup_steps < 0 or self.patience < 1 or self.epochs_per_step < 1:
            raise ValueError(f"invalid SeparationConfig: {self}")

    @property
    def step_cap(self) -> int:
        if self.max_steps is not None:
            return self.max_steps
        return round(2 * math.log(0.6) / math.log(1.0 - self.gamma))


@dataclass
class SeparationStep:
    removed: list[int]
    val_acc: float
    precision: float | None = None  # share of the removed samples that are truly unreliable (diagnostics)


@dataclass
class SeparationResult:
    reliable: torch.Tensor  # indices into the training set (D_R)
    unreliable: torch.Tensor  # indices (D_U), in the order they were moved
    steps: list[SeparationStep] = field(default_factory=list)
    best_step: int | None = None  # the step whose D_R was kept (restoring rule); None = the last step's

    @property
    def removed_fraction(self) -> float:
        n = len(self.reliable) + len(self.unreliable)
        return len(self.unreliable) / max(1, n)


def separation_loss(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sample (1/|S|) Σ_{j∈S} −log p_j, shape (B,)."""
    logp = F.log_softmax(logits, 1)
    m = mask.float()
    return -(logp * m).sum(1) / m.sum(1).clamp_min(1.0)


def recursive_separation(
    make_model: Callable[[int], nn.Module],
    x: torch.Tensor,
    mask: torch.Tensor,
    val: Split,
    cfg: SeparationConfig,
    generator: torch.Generator | None = None,
    *,
    truth_reliable: torch.Tensor | None = None,
) -> SeparationResult:
    """Split the training set into D_R / D_U by repeated small-loss ranking with fresh models.

    Step t trains a fresh model on the current D_R_t (D_R_0 = everything), scores its validation accuracy,
    then moves the γ-fraction of D_R_t with the largest loss to D_U. The monitor (from step `warmup_steps`)
    stops after `patience` consecutive steps strictly below the best. With `restore_best`, the result is the
    D_R_t of the best-scoring step, so nothing is removed when the model trained on all data scores best: the
    removed fraction is chosen by validation accuracy, with no floor. Without it (the paper's code), the
    removals of every step taken are kept.

    Args:
        make_model: step index → freshly initialised model (re-initialised every step, as in the code).
        truth_reliable: optional ground truth (N,) bool, used only to log the precision of each removal.
    """
    reliable = torch.arange(len(x))
    removed_all: list[int] = []
    steps: list[SeparationStep] = []
    best, bad = -1.0, 0
    best_step, best_reliable, best_removed = None, reliable, 0
    for t in range(cfg.step_cap):
        model = make_model(t)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        last_loss = torch.zeros(len(reliable))
        model.train()
        for epoch in range(cfg.epochs_per_step):
            for pos in minibatches(len(reliable), cfg.batch_size, generator):
                idx = reliable[pos]
                per_sample = separation_loss(model(x[idx]), mask[idx])
                if epoch == cfg.epochs_per_step - 1:  # rank by the loss recorded during the last epoch (code)
                    last_loss[pos] = per_sample.detach()
                opt.zero_grad(set_to_none=True)
                per_sample.mean().backward()
                opt.step()
        val_acc = accuracy(model, val)
        if t >= cfg.warmup_steps and val_acc >= best:
            best_step, best_reliable, best_removed = t, reliable, len(removed_all)
        m = int(cfg.gamma * len(reliable))
        order = torch.argsort(last_loss, descending=True, stable=True)
        out = reliable[order[:m]]
        reliable = reliable[order[m:]].sort().values
        removed_all += out.tolist()
        precision = None
        if truth_reliable is not None and m > 0:
            precision = (~truth_reliable[out]).float().mean().item()
        steps.append(SeparationStep(out.tolist(), val_acc, precision))
        logger.debug("separation step %d: val %.3f, moved %d, precision %s", t, val_acc, m, precision)
        if t >= cfg.warmup_steps:
            if val_acc >= best:
                best, bad = val_acc, 0
            else:
                bad += 1
                if bad >= cfg.patience:
                    break
    if cfg.restore_best and best_step is not None:
        removed = torch.tensor(removed_all[:best_removed], dtype=torch.long)
        return SeparationResult(best_reliable, removed, steps, best_step)
    return SeparationResult(reliable, torch.tensor(removed_all, dtype=torch.long), steps)


@dataclass(frozen=True)
class FixMatchConfig:
    threshold: float = 0.95  # τ
    temperature: float = 1.0  # T
    unlabeled_ratio: int = 3  # μ_u
    weight: float = 1.0  # λ_u (the paper's ξ, most likely; 2 on CIFAR-10)


View = Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]


def fixmatch_loss(
    model: nn.Module,
    x_u: torch.Tensor,
    cfg: FixMatchConfig,
    generator: torch.Generator | None = None,
    *,
    weak: View = weak_view,
    strong: View = strong_view,
) -> tuple[torch.Tensor, float]:
    """FixMatch on an unlabeled batch: returns (loss, share of samples above the threshold)."""
    with torch.no_grad():
        q = F.softmax(model(weak(x_u, generator)) / cfg.temperature, 1)
        conf, pseudo = q.max(1)
        keep = (conf >= cfg.threshold).float()
    ce = F.cross_entropy(model(strong(x_u, generator)), pseudo, reduction="none")
    return (ce * keep).sum() / len(x_u), keep.mean().item()


def train_upllrs_stage2(
    model: nn.Module,
    x: torch.Tensor,
    mask: torch.Tensor,
    split: SeparationResult,
    val: Split,
    cfg: FitConfig,
    fixmatch: FixMatchConfig,
    generator: torch.Generator | None = None,
    *,
    weak: View = weak_view,
    strong: View = strong_view,
    mask_rates: list[float] | None = None,
) -> FitResult:
    """PRODEN on D_R (weak view, see the module note) + λ_u · FixMatch on D_U.

    An "epoch" keeps the baselines' length (len(x) / batch iterations; the code also fixes iterations per
    epoch), so a smaller D_R gets no fewer updates: the epoch's permutation of range(len(x)) is mapped onto D_R
    (position p → D_R[p mod |D_R|]). With D_R = everything and D_U empty this is exactly `train_pll("proden")`
    with the same model, generator and views, so a separation that removes nothing reproduces PRODEN bit for
    bit and the paired difference isolates what separation + SSL change.
    `mask_rates`, when given, receives the share of unlabeled samples above the FixMatch threshold per step.
    """
    rel, unrel = split.reliable, split.unreliable
    if len(rel) == 0:
        raise ValueError("recursive separation left no reliable samples")
    conf = uniform_confidence(mask[rel])
    use_u = fixmatch.weight > 0 and len(unrel) > 0

    def step(batch: torch.Tensor) -> torch.Tensor:
        pos = batch % len(rel)
        idx = rel[pos]
        logits = model(weak(x[idx], generator))
        loss = weighted_ce(logits, conf[pos])
        conf[pos] = renormalised_on_candidates(logits, mask[idx])
        if use_u:
            n_u = fixmatch.unlabeled_ratio * len(pos)
            u_idx = unrel[torch.randint(0, len(unrel), (n_u,), generator=generator)]
            loss_u, rate = fixmatch_loss(model, x[u_idx], fixmatch, generator, weak=weak, strong=strong)
            if mask_rates is not None:
                mask_rates.append(rate)
            loss = loss + fixmatch.weight * loss_u
        return loss

    return fit(model, len(x), step, val, cfg, generator)
