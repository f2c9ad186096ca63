import pytest
import torch
import torch.nn.functional as F

from refine_control.weaklabel.partial_label import (
    cc_loss,
    generate_unreliable_candidates,
    renormalised_on_candidates,
    uniform_confidence,
    weighted_ce,
)


@pytest.mark.parametrize(("eta", "mu"), [(0.1, 0.5), (0.3, 0.3), (0.0, 0.7)])
def test_generator_rates_match_theory(eta, mu):
    k, n = 10, 40_000
    y = torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(1))
    sets = generate_unreliable_candidates(y, k, eta=eta, mu=mu, generator=torch.Generator().manual_seed(2))
    assert sets.unreliable_rate == pytest.approx(mu * (1 - eta), abs=0.01)
    assert sets.mean_size == pytest.approx(1 + eta * (k - 1), abs=0.03)
    assert bool(sets.mask.any(1).all())
    assert torch.equal(sets.reliable, sets.mask[torch.arange(n), y])


def test_generator_flips_are_uniform_over_wrong_labels():
    k, n = 5, 50_000
    y = torch.zeros(n, dtype=torch.long)
    sets = generate_unreliable_candidates(y, k, eta=0.0, mu=1.0, generator=torch.Generator().manual_seed(0))
    assert sets.unreliable_rate == 1.0 and sets.mean_size == 1.0
    share = sets.mask.float().mean(0)
    assert share[0] == 0.0
    assert torch.allclose(share[1:], torch.full((k - 1,), 0.25), atol=0.01)


def test_generator_rejects_bad_rates():
    with pytest.raises(ValueError, match="eta"):
        generate_unreliable_candidates(torch.zeros(3, dtype=torch.long), 3, eta=1.5, mu=0.1)


def test_cc_loss_on_singletons_is_cross_entropy_and_confidence_rules():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    single = torch.tensor([[True, False, False], [False, True, False]])
    assert cc_loss(logits, single) == pytest.approx(F.cross_entropy(logits, torch.tensor([0, 1])).item())
    both = torch.tensor([[True, True, False], [True, True, True]])
    p = F.softmax(logits, 1)
    expected = -(torch.log(p[0, :2].sum()) + torch.log(p[1].sum())) / 2
    assert cc_loss(logits, both) == pytest.approx(expected.item(), abs=1e-6)
    conf = renormalised_on_candidates(logits, both)
    assert torch.allclose(conf[0], torch.cat([p[0, :2] / p[0, :2].sum(), torch.zeros(1)]))
    assert torch.allclose(uniform_confidence(both)[0], torch.tensor([0.5, 0.5, 0.0]))
    assert weighted_ce(logits, F.one_hot(torch.tensor([0, 1]), 3).float()) == pytest.approx(
        F.cross_entropy(logits, torch.tensor([0, 1])).item()
    )
