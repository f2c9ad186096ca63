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
    cfg = SeparationConfig(gamma=0.1, epochs_per_step=8, batch_size=32, lr=3e-3, max_steps=3)
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
