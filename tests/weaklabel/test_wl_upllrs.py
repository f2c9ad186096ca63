import math

import pytest
import torch

from refine_control.weaklabel.datasets import Split
from refine_control.weaklabel.nets import build_mlp
from refine_control.weaklabel.partial_label import generate_unreliable_candidates
from refine_control.weaklabel.upllrs import (
    FixMatchConfig,
    SeparationConfig,
    fixmatch_loss,
    recursive_separation,
    separation_loss,
)


def _clusters(n: int, k: int, seed: int) -> Split:
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(k, 1, 4, 4, generator=g)
    y = torch.arange(n) % k
    x = (centres[y] + 0.08 * torch.randn(n, 1, 4, 4, generator=g)).clamp(0, 1)
    return Split(x, y)


def test_step_cap_follows_the_code_formula():
    assert SeparationConfig(gamma=0.03).step_cap == 34
    assert SeparationConfig(gamma=0.05).step_cap == round(2 * math.log(0.6) / math.log(0.95)) == 20
    assert SeparationConfig(gamma=0.05, max_steps=3).step_cap == 3


def test_separation_loss_is_the_candidate_average():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, False, False]])
    assert separation_loss(logits, mask).item() == pytest.approx(math.log(4))


def test_recursive_separation_moves_truly_unreliable_samples_first():
    train, val = _clusters(400, 4, 0), _clusters(80, 4, 1)
    sets = generate_unreliable_candidates(train.y, 4, eta=0.0, mu=0.3, generator=torch.Generator().manual_seed(3))
    cfg = SeparationConfig(gamma=0.1, epochs_per_step=8, batch_size=32, lr=3e-3, max_steps=3, restore_best=False)
    result = recursive_separation(
        lambda t: build_mlp((1, 4, 4), (32,), 4, seed=t),
        train.x, sets.mask, val, cfg, torch.Generator().manual_seed(4), truth_reliable=sets.reliable,
    )  # fmt: skip
    base_rate = sets.unreliable_rate
    assert 0.2 < base_rate < 0.4
    assert result.steps[0].precision >= 0.9  # 3× the base rate: small loss ⇒ reliable
    assert len(result.steps) == 3 and len(result.reliable) + len(result.unreliable) == 400
    assert set(result.reliable.tolist()).isdisjoint(result.unreliable.tolist())
    left = (~sets.reliable[result.reliable]).float().mean().item()
    assert left < base_rate / 2


def test_fixmatch_masks_low_confidence_and_divides_by_the_full_batch():
    model = build_mlp((1, 4, 4), (), 3, seed=0)
    x = torch.rand(8, 1, 4, 4)
    loss, kept = fixmatch_loss(model, x, FixMatchConfig(threshold=1.01))
    assert loss.item() == 0.0 and kept == 0.0
    loss, kept = fixmatch_loss(model, x, FixMatchConfig(threshold=0.0))
    assert kept == 1.0 and loss.item() > 0


class _Scripted(torch.nn.Module):
    """A stand-in 'network' with scripted outputs: training sample i gets the separation loss softplus(i / 100)
    (so removals go from the highest index down), and at step t it classifies round(accs[t] · n_val) of the
    validation samples correctly. Its one parameter gets zero gradient, so training changes nothing."""

    def __init__(self, acc: float, n_val: int) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.correct = round(acc * n_val)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = x[:, 0, 0, 0]
        train_logits = torch.stack([torch.zeros_like(ids), ids / 100], 1)
        val_pos = ids - 10_000
        val_logits = torch.stack([(val_pos < self.correct).float(), (val_pos >= self.correct).float()], 1)
        return torch.where((ids >= 10_000)[:, None], val_logits, train_logits) + 0 * self.w


def _scripted_run(accs: list[float], n: int, cfg: SeparationConfig):
    x = torch.arange(n, dtype=torch.float32).reshape(n, 1, 1, 1)
    mask = torch.zeros(n, 2, dtype=torch.bool)
    mask[:, 0] = True  # S = {0}: the separation loss is −log p_0 = softplus(i / 100)
    n_val = 20
    val = Split(
        10_000 + torch.arange(n_val, dtype=torch.float32).reshape(n_val, 1, 1, 1), torch.zeros(n_val, dtype=torch.long)
    )
    return recursive_separation(
        lambda t: _Scripted(accs[t], n_val), x, mask, val, cfg, torch.Generator().manual_seed(0)
    )


def test_restoring_stop_rule_removes_nothing_when_the_full_data_scores_best():
    cfg = SeparationConfig(gamma=0.1, epochs_per_step=1, patience=3, max_steps=10, batch_size=50)
    result = _scripted_run([0.9, 0.5, 0.6, 0.7, 0.8, 0.9, 0.9, 0.9, 0.9, 0.9], 100, cfg)
    assert len(result.steps) == 4  # step 0 best, then 3 steps below it
    assert result.best_step == 0 and result.removed_fraction == 0.0
    assert sorted(result.reliable.tolist()) == list(range(100)) and len(result.unreliable) == 0


def test_restoring_stop_rule_keeps_the_best_steps_split():
    cfg = SeparationConfig(gamma=0.1, epochs_per_step=1, patience=3, max_steps=10, batch_size=50)
    result = _scripted_run([0.5, 0.6, 0.8, 0.7, 0.7, 0.7, 0.9, 0.9, 0.9, 0.9], 100, cfg)
    assert len(result.steps) == 6 and result.best_step == 2
    # D_R_2 = all minus step 0's removal (10: ids 99..90) and step 1's (int(0.1 · 90) = 9: ids 89..81)
    assert result.unreliable.tolist() == list(range(99, 80, -1))
    assert result.reliable.tolist() == list(range(81))
    assert result.removed_fraction == pytest.approx(0.19)


def test_code_stop_rule_has_the_documented_floor():
    gamma, warmup, patience, n = 0.05, 6, 5, 1000
    cfg = SeparationConfig(
        gamma=gamma, epochs_per_step=1, warmup_steps=warmup, patience=patience, restore_best=False, batch_size=500
    )
    accs = [0.95] * warmup + [max(0.0, 0.9 - 0.05 * i) for i in range(30)]  # strictly worse once monitored
    result = _scripted_run(accs, n, cfg)
    assert len(result.steps) == warmup + patience + 1 and result.best_step is None
    left = n
    for _ in range(warmup + patience + 1):
        left -= int(gamma * left)
    assert len(result.unreliable) == n - left
    assert result.removed_fraction == pytest.approx(1 - (1 - gamma) ** (warmup + patience + 1), abs=0.005)


def test_stage2_with_nothing_removed_is_exactly_proden():
    from refine_control.weaklabel.augment import conv_strong_view, conv_weak_view
    from refine_control.weaklabel.partial_label import train_pll
    from refine_control.weaklabel.training import FitConfig
    from refine_control.weaklabel.upllrs import SeparationResult, train_upllrs_stage2

    train, val = _clusters(120, 4, 0), _clusters(40, 4, 1)
    sets = generate_unreliable_candidates(train.y, 4, eta=0.3, mu=0.3, generator=torch.Generator().manual_seed(3))
    cfg = FitConfig(epochs=2, batch_size=32, lr=1e-2, patience=0)
    a = build_mlp((1, 4, 4), (16,), 4, seed=5)
    train_pll("proden", a, train.x, sets.mask, val, cfg, torch.Generator().manual_seed(9), augment=conv_weak_view)
    b = build_mlp((1, 4, 4), (16,), 4, seed=5)
    nothing = SeparationResult(torch.arange(120), torch.zeros(0, dtype=torch.long))
    train_upllrs_stage2(
        b, train.x, sets.mask, nothing, val, cfg, FixMatchConfig(), torch.Generator().manual_seed(9),
        weak=conv_weak_view, strong=conv_strong_view,
    )  # fmt: skip
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)
