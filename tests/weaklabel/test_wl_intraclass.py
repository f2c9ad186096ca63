import math

import pytest
import torch
import torch.nn.functional as F

from refine_control.weaklabel.intraclass import (
    FeatureMemory,
    class_distances,
    intra_class_infonce,
    probability_margin,
)
from refine_control.weaklabel.soft_kd import kd_loss


def test_probability_margin_by_hand():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3]]))
    m = probability_margin(logits, torch.tensor([0, 2]))
    assert m.tolist() == pytest.approx([0.5, -0.2], abs=1e-6)


def test_infonce_uses_only_same_class_negatives():
    z = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), dim=1)
    z_pos = F.normalize(torch.tensor([[1.0, 0.2], [0.1, 1.0], [1.0, 0.9]]), dim=1)
    y = torch.tensor([0, 0, 1])  # sample 2 has no classmate → skipped
    tau = 0.5
    loss, count = intra_class_infonce(z, z_pos, y, tau=tau)
    assert count == 2
    expected = []
    for i, j in ((0, 1), (1, 0)):
        pos, neg = (z[i] @ z_pos[i]) / tau, (z[i] @ z[j]) / tau
        expected.append(-(pos - torch.logaddexp(pos, neg)))
    assert loss.item() == pytest.approx(torch.stack(expected).mean().item(), abs=1e-6)


def test_margin_gate_and_empty_anchor_set():
    z = F.normalize(torch.randn(4, 3, generator=torch.Generator().manual_seed(0)), dim=1)
    y = torch.tensor([0, 0, 1, 1])
    _, count = intra_class_infonce(z, z, y, tau=0.1, anchors=torch.tensor([True, False, False, True]))
    assert count == 2
    loss, count = intra_class_infonce(z, z, y, tau=0.1, anchors=torch.zeros(4, dtype=torch.bool))
    assert count == 0 and loss.item() == 0.0


def test_memory_supplies_negatives_and_wraps_around():
    mem = FeatureMemory(3, 2)
    assert len(mem) == 0
    mem.push(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([5, 6]))
    mem.push(torch.tensor([[1.0, 1.0], [2.0, 2.0]]), torch.tensor([7, 8]))
    assert len(mem) == 3 and sorted(mem.labels.tolist()) == [6, 7, 8]  # the oldest entry (5) was overwritten
    z = F.normalize(torch.tensor([[1.0, 0.0]]), dim=1)
    _, count = intra_class_infonce(z, z, torch.tensor([7]), tau=0.5, memory=mem)
    assert count == 1  # its only negative comes from the memory


def test_class_distances_by_hand():
    feats = torch.tensor([[0.0, 1.0], [0.0, -1.0], [3.0, 1.0], [3.0, -1.0]])
    stats = class_distances(feats, torch.tensor([0, 0, 1, 1]), normalise=False)
    assert stats.intra == pytest.approx(1.0) and stats.inter == pytest.approx(3.0)
    assert stats.ratio == pytest.approx(1 / 3)


def test_kd_loss_golden_values():
    s = torch.tensor([[1.0, 0.0, -1.0]])
    assert kd_loss(s, s).item() == pytest.approx(0.0, abs=1e-7)
    t = torch.tensor([[0.0, 2.0, 0.0]])
    T = 4.0
    p_t, p_s = F.softmax(t / T, 1), F.softmax(s / T, 1)
    kl = (p_t * (p_t.log() - p_s.log())).sum().item()
    assert kd_loss(s, t, temperature=T).item() == pytest.approx(T * T * kl, rel=1e-5)
    y = torch.tensor([1])
    mixed = kd_loss(s, t, y, temperature=T, kd_weight=0.9).item()
    assert mixed == pytest.approx(0.1 * F.cross_entropy(s, y).item() + 0.9 * T * T * kl, rel=1e-5)
    assert not math.isnan(mixed)


def _tiny_split(n: int = 48):
    from refine_control.weaklabel.datasets import Split

    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 3
    x = (torch.rand(3, 1, 4, 4, generator=g)[y] + 0.1 * torch.randn(n, 1, 4, 4, generator=g)).clamp(0, 1)
    return Split(x, y)


def test_lambda_zero_is_an_equal_training_control():
    """λ = 0 and λ = 1 with a gate no anchor can pass (δ = 2) must train identically: same batches, same views,
    same passes; only the (here empty) intra-class term differs."""
    from refine_control.weaklabel.intraclass import IntraClassConfig, train_teacher
    from refine_control.weaklabel.nets import build_net
    from refine_control.weaklabel.training import FitConfig

    train = _tiny_split()
    cfg_fit = FitConfig(epochs=2, batch_size=16, lr=1e-2, patience=0)
    models = []
    for cfg in (IntraClassConfig(lam=0.0, margin=0.5), IntraClassConfig(lam=1.0, margin=2.0)):
        model = build_net("mlp:8", (1, 4, 4), 3, seed=0, proj_dim=4)
        train_teacher(model, train, None, cfg, cfg_fit, torch.Generator().manual_seed(1))
        models.append(model)
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        assert torch.equal(a, b)
    changed = build_net("mlp:8", (1, 4, 4), 3, seed=0, proj_dim=4)
    train_teacher(
        changed, train, None, IntraClassConfig(lam=1.0, margin=None), cfg_fit, torch.Generator().manual_seed(1)
    )
    assert not torch.equal(changed.body[1].weight, models[0].body[1].weight)  # the term does act when it can


def test_gate_stats_by_hand():
    from refine_control.weaklabel.datasets import Split
    from refine_control.weaklabel.intraclass import GateStats, IntraClassConfig, train_teacher
    from refine_control.weaklabel.nets import build_net
    from refine_control.weaklabel.training import FitConfig

    x = torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    train = Split(x, torch.tensor([0, 0, 0, 0, 1]))  # sample 4 has no classmate
    stats = GateStats()
    model = build_net("mlp:8", (1, 4, 4), 2, seed=0, proj_dim=4)
    cfg = IntraClassConfig(lam=1.0, margin=None, memory_size=0)
    train_teacher(model, train, None, cfg, FitConfig(epochs=3, batch_size=5, lr=1e-3, patience=0), None, stats=stats)
    assert stats.passed == [1.0, 1.0, 1.0]  # no gate: every anchor counts as passing
    assert stats.used == pytest.approx([0.8, 0.8, 0.8])  # 4 of 5 anchors have a same-class negative
    stats = GateStats()
    cfg = IntraClassConfig(lam=1.0, margin=2.0, memory_size=0)  # a margin above 1 can never be reached
    train_teacher(model, train, None, cfg, FitConfig(epochs=2, batch_size=5, lr=1e-3, patience=0), None, stats=stats)
    assert stats.passed == [0.0, 0.0] and stats.used == [0.0, 0.0]
