"""Intra-class contrastive teacher training, its distillation, and intra/inter-class distance diagnostics.

Paper: "Enriching Knowledge Distillation with Intra-Class Contrastive Learning" (Yuan, Xu, Geng, Rui;
arXiv 2509.22053). What we could confirm: teacher loss L_CE + λ·L_intra; the positive of an anchor is an
augmented view of the same sample and its negatives are *other samples of the same class*; L_intra is applied
only to anchors whose classification margin exceeds δ ("margin loss", added because plain L_intra was unstable);
a cache of features from earlier batches supplies extra same-class negatives. The exact InfoNCE form, τ, λ, δ
and the cache design were not readable and are reconstructed here (spec §2.3, gaps P2-a…P2-e):

    ℓ_i = −log( exp(z_i·z_i'/τ) / [exp(z_i·z_i'/τ) + Σ_{n∈N(i)} exp(z_i·n/τ)] ),   N(i) = same-class batch + memory
    L = L_CE + λ · mean_{i: m_i > δ, N(i) ≠ ∅} ℓ_i,   m_i = p(y_i|x_i) − max_{k≠y_i} p(k|x_i)

with z the L2-normalised projection of the penultimate features and the memory a FIFO of detached projections.
Other-class samples are deliberately not negatives: inter-class separation is left to cross-entropy.
"""

import logging
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from refine_control.weaklabel.augment import add_noise, random_shift
from refine_control.weaklabel.datasets import Split
from refine_control.weaklabel.soft_kd import kd_loss
from refine_control.weaklabel.training import FitConfig, FitResult, fit, predict_logits

logger = logging.getLogger(__name__)


class FeatureMemory:
    """FIFO queue of (detached feature, label) pairs: the cache of same-class negatives from earlier batches."""

    def __init__(self, size: int, dim: int) -> None:
        if size < 0:
            raise ValueError(f"memory size must be >= 0, got {size}")
        self.size = size
        self.feats = torch.zeros(size, dim)
        self.labels = torch.full((size,), -1, dtype=torch.long)  # -1 = empty slot, never matches a class
        self._ptr = 0

    def push(self, feats: torch.Tensor, labels: torch.Tensor) -> None:
        if self.size == 0:
            return
        feats, labels = feats.detach()[-self.size :], labels[-self.size :]
        idx = (self._ptr + torch.arange(len(labels))) % self.size
        self.feats[idx] = feats
        self.labels[idx] = labels
        self._ptr = int((self._ptr + len(labels)) % self.size)

    def __len__(self) -> int:
        return int((self.labels >= 0).sum())


def probability_margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """m_i = p(y_i|x_i) − max_{k≠y_i} p(k|x_i), in [−1, 1], shape (B,)."""
    p = F.softmax(logits, 1)
    true = p.gather(1, labels[:, None]).squeeze(1)
    others = p.scatter(1, labels[:, None], float("-inf")).max(1).values
    return true - others


def intra_class_infonce(
    z: torch.Tensor,
    z_pos: torch.Tensor,
    labels: torch.Tensor,
    *,
    tau: float,
    anchors: torch.Tensor | None = None,
    memory: FeatureMemory | None = None,
) -> tuple[torch.Tensor, int]:
    """Mean ℓ_i over the selected anchors that have at least one same-class negative; returns (loss, count).

    Args:
        z, z_pos: (B, P) L2-normalised projections of two views of the same batch.
        anchors: optional (B,) bool mask (the margin gate).
    """
    B = len(labels)
    pos = (z * z_pos).sum(1, keepdim=True) / tau  # (B, 1)
    neg_feats, neg_labels = z.detach(), labels  # batch negatives: other samples' first views
    if memory is not None and len(memory):
        neg_feats = torch.cat([neg_feats, memory.feats])
        neg_labels = torch.cat([neg_labels, memory.labels])
    sims = z @ neg_feats.T / tau  # (B, B + M)
    same = labels[:, None] == neg_labels[None, :]
    same[:, :B] &= ~torch.eye(B, dtype=torch.bool)
    keep = same.any(1)
    if anchors is not None:
        keep &= anchors
    if not keep.any():
        return z.sum() * 0.0, 0
    logits = torch.cat([pos, sims.masked_fill(~same, float("-inf"))], 1)[keep]
    loss = -F.log_softmax(logits, 1)[:, 0]
    return loss.mean(), int(keep.sum())


@dataclass(frozen=True)
class IntraClassConfig:
    lam: float = 0.1  # λ; 0 = the plain cross-entropy teacher
    tau: float = 0.5  # τ (spec: 0.1 on CIFAR, 0.1–0.5 on digits)
    margin: float | None = 0.5  # δ on the probability margin; None = no gating (every anchor)
    memory_size: int = 256

    def __post_init__(self) -> None:
        if self.lam < 0 or self.tau <= 0:
            raise ValueError(f"need λ ≥ 0 and τ > 0, got λ={self.lam}, τ={self.tau}")


def two_views(x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Spec §3.2 views: with probability 0.5 a shift of up to max(1, side/14) pixels (±1 on 8×8, ±2 on 28×28),
    then N(0, 0.05²) pixel noise."""
    shift = max(1, x.shape[-1] // 14)

    def view() -> torch.Tensor:
        shifted = random_shift(x, shift, generator)
        use = (torch.rand(len(x), generator=generator) < 0.5)[:, None, None, None]
        return add_noise(torch.where(use, shifted, x), 0.05, generator)

    return view(), view()


@dataclass
class GateStats:
    """Per epoch: share of anchors whose margin passes δ, and share that entered L_intra (gate passed and at
    least one same-class negative). Logged for every teacher, λ = 0 included, so the gate has a control."""

    passed: list[float] = field(default_factory=list)
    used: list[float] = field(default_factory=list)
    _p: int = 0
    _u: int = 0
    _n: int = 0

    def add(self, passed: int, used: int, n: int) -> None:
        self._p, self._u, self._n = self._p + passed, self._u + used, self._n + n

    def end_epoch(self, _epoch: int = 0) -> None:
        if self._n:
            self.passed.append(self._p / self._n)
            self.used.append(self._u / self._n)
        self._p = self._u = self._n = 0


def train_teacher(
    model: nn.Module,
    train: Split,
    val: Split | None,
    cfg: IntraClassConfig,
    fit_cfg: FitConfig,
    generator: torch.Generator | None,
    *,
    stats: GateStats | None = None,
) -> FitResult:
    """L_CE (on view 1) + λ · gated intra-class InfoNCE between the two views, with a feature memory.

    Every teacher, λ = 0 included, draws the same two views and runs the same forward passes, gate and memory,
    so a λ = 0 teacher is the equal-training control (it only drops the λ term from the loss).
    """
    with torch.no_grad():
        dim = model.project(model.features(train.x[:1])).shape[1]
    memory = FeatureMemory(cfg.memory_size, dim)

    def step(idx: torch.Tensor) -> torch.Tensor:
        y = train.y[idx]
        v1, v2 = two_views(train.x[idx], generator)
        f1, f2 = model.features(v1), model.features(v2)
        logits = model.head(f1)
        z1, z2 = model.project(f1), model.project(f2)
        margin = probability_margin(logits.detach(), y)
        gate = None if cfg.margin is None else margin > cfg.margin
        intra, used = intra_class_infonce(z1, z2, y, tau=cfg.tau, anchors=gate, memory=memory)
        memory.push(z1, y)
        if stats is not None:
            stats.add(int(gate.sum()) if gate is not None else len(y), used, len(y))
        loss = F.cross_entropy(logits, y)
        return loss + cfg.lam * intra if cfg.lam > 0 else loss

    on_epoch_end = stats.end_epoch if stats is not None else None
    return fit(model, len(train), step, val, fit_cfg, generator, on_epoch_end=on_epoch_end)


def train_kd_student(
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    train: Split,
    val: Split,
    fit_cfg: FitConfig,
    generator: torch.Generator | None,
    *,
    temperature: float = 4.0,
    kd_weight: float = 0.9,
    transfer_x: torch.Tensor | None = None,
) -> FitResult:
    """Hinton KD from a frozen teacher on the same augmented views (kd_weight = 0 trains the student on CE).

    `transfer_x` adds unlabelled images to the transfer set: an epoch then runs over labelled + unlabelled
    images, the KD term covers all of them and the CE term only the labelled ones of each batch.
    """
    teacher.eval()
    x = train.x if transfer_x is None else torch.cat([train.x, transfer_x])
    y = train.y if transfer_x is None else torch.cat([train.y, torch.full((len(transfer_x),), -1)])

    def step(idx: torch.Tensor) -> torch.Tensor:
        v, _ = two_views(x[idx], generator)
        s_logits = student(v)
        labels = y[idx]
        if kd_weight == 0:
            return F.cross_entropy(s_logits, labels)
        with torch.no_grad():
            t_logits = teacher(v)
        if transfer_x is None:
            return kd_loss(s_logits, t_logits, labels, temperature=temperature, kd_weight=kd_weight)
        soft = kd_loss(s_logits, t_logits, temperature=temperature)
        has = labels >= 0
        ce = F.cross_entropy(s_logits[has], labels[has]) if has.any() else s_logits.sum() * 0.0
        return (1.0 - kd_weight) * ce + kd_weight * soft

    return fit(student, len(x), step, val, fit_cfg, generator)


@dataclass(frozen=True)
class DistanceStats:
    intra: float  # mean over classes of the mean distance to the class centroid
    inter: float  # mean pairwise distance between class centroids
    ratio: float  # intra / inter: the quantity the paper's theory says λ increases


def class_distances(feats: torch.Tensor, labels: torch.Tensor, *, normalise: bool = True) -> DistanceStats:
    """Intra/inter-class distances of (N, D) features (L2-normalised first by default)."""
    if normalise:
        feats = F.normalize(feats, dim=1)
    classes = labels.unique()
    if len(classes) < 2:
        raise ValueError("class distances need at least two classes")
    centroids = torch.stack([feats[labels == c].mean(0) for c in classes])
    intra = torch.stack([(feats[labels == c] - centroids[i]).norm(dim=1).mean() for i, c in enumerate(classes)])
    pair = torch.cdist(centroids, centroids)
    k = len(classes)
    inter = pair.sum() / (k * (k - 1))
    return DistanceStats(intra.mean().item(), inter.item(), (intra.mean() / inter).item())


@torch.no_grad()
def teacher_diagnostics(model: nn.Module, split: Split, temperature: float = 4.0) -> dict[str, float]:
    """Test-set intra/inter ratio of the penultimate features and the mean softmax entropy at T."""
    model.eval()
    stats = class_distances(model.features(split.x), split.y)
    p = F.softmax(predict_logits(model, split.x) / temperature, 1)
    entropy = -(p * p.clamp_min(1e-12).log()).sum(1).mean().item()
    return {"intra": stats.intra, "inter": stats.inter, "intra_inter_ratio": stats.ratio, "entropy_T4": entropy}
