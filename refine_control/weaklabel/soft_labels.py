"""Biased soft labels: the two indicators, the Δ + γ < 1 sufficiency check, and soft-label producers.

Paper: "Learning From Biased Soft Labels" (Yuan, Shi, Xu, Yang, Geng, Rui; NeurIPS 2023). The paper defines

- the unreliability degree Δ_k = P[y ∉ Ω_k(d_x)] (the true label falls outside the soft label's top-k set), and
- the ambiguity degree γ_k = the largest probability with which one particular wrong label sits in the top-k set,

and proves that Δ + γ < 1 suffices for classifier consistency and ERM learnability of the top-k partial loss.
The exact γ estimator is not in the material we could read (spec gap G-B1): we use the class-conditional
maximum max_a max_{j≠a} P[j ∈ Ω_k | y = a] and also report the global variant max_j P[j ∈ Ω_k, j ≠ y].

Producers (one per weak-supervision setting of the paper, plus a synthetic "skilful but bad teacher"):
`biased_soft_labels` (our SBT analogue, top-1 always wrong), `partial_label_soft_labels` (uniform over a
candidate set), `additive_noise_soft_labels` (Gaussian noise, clip, renormalise — the noise model is ours,
G-B4); incomplete supervision (teacher softmax on unlabeled data) lives in softlabel_experiment.py because it
trains models.
"""

from dataclasses import dataclass

import torch

from refine_control.weaklabel.partial_label import cc_loss


@dataclass(frozen=True)
class Indicators:
    k: int | None  # None when the sets are given (candidate sets of varying size)
    delta: float
    gamma: float
    gamma_global: float
    top1_acc: float  # accuracy of the soft labels' own arg-max (shows how biased they are)

    @property
    def total(self) -> float:
        return self.delta + self.gamma

    @property
    def sufficient(self) -> bool:
        return is_sufficient(self.delta, self.gamma)


def is_sufficient(delta: float, gamma: float) -> bool:
    """The paper's sufficient condition for learnability from biased soft labels: Δ + γ < 1."""
    if not (0.0 <= delta <= 1.0 and 0.0 <= gamma <= 1.0):
        raise ValueError(f"Δ and γ are probabilities; got Δ={delta}, γ={gamma}")
    return delta + gamma < 1.0


def topk_sets(soft: torch.Tensor, k: int) -> torch.Tensor:
    """(N, C) soft labels → (N, C) bool mask of the top-k entries (ties go to the lower class index)."""
    if not 1 <= k <= soft.shape[1]:
        raise ValueError(f"`k` must be in [1, {soft.shape[1]}], got {k}")
    order = torch.argsort(-soft, dim=1, stable=True)[:, :k]
    mask = torch.zeros_like(soft, dtype=torch.bool)
    mask.scatter_(1, order, True)
    return mask


def set_indicators(sets: torch.Tensor, y: torch.Tensor) -> tuple[float, float, float]:
    """(Δ, γ class-conditional, γ global) of label sets (N, C) bool against true labels y (N,)."""
    rows = torch.arange(sets.shape[0])
    delta = (~sets[rows, y]).float().mean().item()
    wrong = sets.clone()
    wrong[rows, y] = False
    gamma = 0.0
    for a in y.unique():
        gamma = max(gamma, wrong[y == a].float().mean(0).max().item())
    gamma_global = wrong.float().mean(0).max().item()
    return delta, gamma, gamma_global


def soft_label_indicators(soft: torch.Tensor, y: torch.Tensor, k: int) -> Indicators:
    """Δ_k, γ_k (and the global γ, top-1 accuracy) of an (N, C) soft-label matrix."""
    delta, gamma, gamma_global = set_indicators(topk_sets(soft, k), y)
    top1 = (soft.argmax(1) == y).float().mean().item()
    return Indicators(k, delta, gamma, gamma_global, top1)


def best_k_indicators(soft: torch.Tensor, y: torch.Tensor, ks: tuple[int, ...] = (1, 2, 3, 4)) -> Indicators:
    """The k with the smallest Δ_k + γ_k on (soft, y) (spec G-B5: the theory holds for any fixed k).

    Pass *validation* soft labels and labels to choose k (`choose_k`); on the training labels this would let the
    true training labels pick the learner's k.
    """
    return min((soft_label_indicators(soft, y, k) for k in ks), key=lambda ind: (ind.total, ind.k))


def choose_k(val_soft: torch.Tensor, val_y: torch.Tensor, ks: tuple[int, ...] = (1, 2, 3)) -> int:
    """k for the top-k learner, chosen on a validation split: the smallest Δ_k + γ_k there (ties → smaller k)."""
    k = best_k_indicators(val_soft, val_y, ks).k
    assert k is not None
    return k


def class_margins(sets: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per class a: P[a ∈ S | y = a] − max_{j≠a} P[j ∈ S | y = a]. Positive for every class ⇔ the true label is
    the most frequent candidate of its class, i.e. identifiable by a learner with enough data, whatever Δ + γ."""
    classes = sets.shape[1]
    out = torch.full((classes,), float("nan"))  # NaN for a class without samples
    for a in range(classes):
        rows = sets[y == a].float()
        if len(rows):
            freq = rows.mean(0)
            out[a] = freq[a] - torch.cat([freq[:a], freq[a + 1 :]]).max()
    return out


def topk_partial_loss(logits: torch.Tensor, sets: torch.Tensor) -> torch.Tensor:
    """−log Σ_{j∈Ω} f_j(x): the loss the theory's guarantee is about (Ω = top-k set or candidate set)."""
    return cc_loss(logits, sets)


def biased_soft_labels(
    y: torch.Tensor,
    num_classes: int,
    *,
    delta: float,
    rho: float,
    masses: tuple[float, ...] = (0.5, 0.3, 0.15),
    confuser_rank: int = 1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Synthetic "skilful but bad teacher" soft labels whose arg-max is always wrong (our SBT analogue).

    The top-k set (k = len(masses)) holds the true label with probability 1 − `delta` (at a random rank ≥ 2);
    with probability `rho` the fixed confuser (y + 1) mod C sits at rank `confuser_rank`; other slots are
    distinct uniformly random wrong labels. Ranks get `masses`; the rest is spread over the other classes.
    """
    k = len(masses)
    if not (2 <= k < num_classes and sum(masses) < 1.0 and 1 <= confuser_rank <= k):
        raise ValueError(f"need 2 ≤ k < C, masses summing below 1, rank in [1, k]; got {masses}, {confuser_rank}")
    n = len(y)
    rest = (1.0 - sum(masses)) / (num_classes - k)
    soft = torch.full((n, num_classes), rest)
    has_true = torch.rand(n, generator=generator) >= delta
    has_conf = torch.rand(n, generator=generator) < rho
    for i in range(n):
        yi = int(y[i])
        confuser = (yi + 1) % num_classes
        ranks: list[int | None] = [None] * k
        if has_conf[i]:
            ranks[confuser_rank - 1] = confuser
        if has_true[i]:
            free = [r for r in range(1, k) if ranks[r] is None]
            ranks[free[int(torch.randint(len(free), (1,), generator=generator))]] = yi
        taken = {yi, confuser}  # the confuser only enters through `rho`
        pool = [j for j in range(num_classes) if j not in taken]
        picks = torch.randperm(len(pool), generator=generator).tolist()
        for r in range(k):
            if ranks[r] is None:
                ranks[r] = pool[picks.pop()]
        for r, label in enumerate(ranks):
            soft[i, label] = masses[r]
    return soft


def partial_label_soft_labels(
    y: torch.Tensor, num_classes: int, *, delta: float, gamma: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """PLL/UPLL candidate sets and their uniform soft labels: each wrong label joins w.p. `gamma`, the true
    label is dropped w.p. `delta`, an empty set gets one random wrong label. Returns (soft, sets)."""
    n = len(y)
    rows = torch.arange(n)
    sets = torch.rand(n, num_classes, generator=generator) < gamma
    sets[rows, y] = torch.rand(n, generator=generator) >= delta
    empty = ~sets.any(1)
    wrong = (y + torch.randint(1, num_classes, (n,), generator=generator)) % num_classes
    sets[rows[empty], wrong[empty]] = True
    soft = sets.float() / sets.float().sum(1, keepdim=True)
    return soft, sets


def additive_noise_soft_labels(
    y: torch.Tensor, num_classes: int, *, sigma: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """d = renormalise(max(e_y + ε, 0)), ε ~ N(0, σ² I) (a uniform d when every entry clips to 0)."""
    onehot = torch.nn.functional.one_hot(y, num_classes).float()
    noisy = (onehot + sigma * torch.randn(onehot.shape, generator=generator)).clamp_min(0.0)
    total = noisy.sum(1, keepdim=True)
    return torch.where(total > 0, noisy / total.clamp_min(1e-12), torch.full_like(noisy, 1.0 / num_classes))


def class_conditional_sets(
    y: torch.Tensor,
    num_classes: int,
    *,
    p_true: torch.Tensor,
    p_confuser: torch.Tensor,
    p_other: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidate sets whose statistics depend on the class a = y: the true label joins w.p. `p_true[a]`, the
    confuser (a + 1) mod C w.p. `p_confuser[a]`, every other label w.p. `p_other`; an empty set gets one uniform
    wrong label. Returns (uniform soft labels over the set, sets).

    Δ averages over classes while γ is a maximum, so Δ + γ can exceed 1 while `p_true[a] > p_confuser[a]` and
    `p_true[a] > p_other` keep the true label the most frequent candidate of every class (identifiable).
    """
    if p_true.shape != (num_classes,) or p_confuser.shape != (num_classes,):
        raise ValueError(f"p_true and p_confuser need shape ({num_classes},)")
    n = len(y)
    rows = torch.arange(n)
    sets = torch.rand(n, num_classes, generator=generator) < p_other
    confuser = (y + 1) % num_classes
    sets[rows, confuser] = torch.rand(n, generator=generator) < p_confuser[y]
    sets[rows, y] = torch.rand(n, generator=generator) < p_true[y]
    empty = ~sets.any(1)
    wrong = (y + torch.randint(1, num_classes, (n,), generator=generator)) % num_classes
    sets[rows[empty], wrong[empty]] = True
    return sets.float() / sets.float().sum(1, keepdim=True), sets


def rank_second_targets(
    y: torch.Tensor, score: torch.Tensor, num_classes: int, *, first: float = 0.5, second: float = 0.35
) -> tuple[torch.Tensor, torch.Tensor]:
    """Training targets for a "skilful but bad" teacher that ranks the true class second.

    The wrong label ranked first is r = (y + 1 + b) mod C, where b ∈ {0, …, C−2} is the bucket of `score`
    (any per-sample number, e.g. a fixed random projection of the image) among the samples of the same class
    (equal-frequency buckets). So r is a deterministic, learnable function of the image, and it is spread
    evenly over the C−1 wrong labels of each class: top-1 accuracy 0, true label in the top 2, and no wrong
    label that co-occurs systematically (γ_2 ≈ 1/(C−1)). Returns (targets (N, C), r).
    """
    if not 0 < second < first and first + second < 1:
        raise ValueError(f"need 0 < second < first and first + second < 1, got {first}, {second}")
    n = len(y)
    bucket = torch.zeros(n, dtype=torch.long)
    for a in y.unique():
        idx = torch.nonzero(y == a).flatten()
        order = torch.argsort(score[idx], stable=True)
        bucket[idx[order]] = (torch.arange(len(idx)) * (num_classes - 1)) // len(idx)
    r = (y + 1 + bucket) % num_classes
    rest = (1.0 - first - second) / (num_classes - 2)
    targets = torch.full((n, num_classes), rest)
    targets[torch.arange(n), r] = first
    targets[torch.arange(n), y] = second
    return targets, r
