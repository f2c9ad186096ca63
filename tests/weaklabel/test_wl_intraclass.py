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
