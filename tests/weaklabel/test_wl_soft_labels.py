import pytest
import torch
import torch.nn.functional as F

from refine_control.weaklabel.soft_labels import (
    additive_noise_soft_labels,
    best_k_indicators,
    biased_soft_labels,
    choose_k,
    class_conditional_sets,
    class_margins,
    is_sufficient,
    partial_label_soft_labels,
    rank_second_targets,
    set_indicators,
    soft_label_indicators,
    topk_partial_loss,
    topk_sets,
)
from refine_control.weaklabel.softlabel_experiment import quick_settings, run_producer

# 6 samples, 3 classes; true labels 0,0,0,1,1,2
SOFT = torch.tensor(
    [
        [0.6, 0.3, 0.1],  # top-1 {0}        top-2 {0, 1}
        [0.2, 0.7, 0.1],  # top-1 {1} wrong  top-2 {1, 0}
        [0.1, 0.2, 0.7],  # top-1 {2} wrong  top-2 {2, 1} (truth out)
        [0.1, 0.8, 0.1],  # top-1 {1}        top-2 {1, 0} (tie 0/2 → lower index 0)
        [0.5, 0.4, 0.1],  # top-1 {0} wrong  top-2 {0, 1}
        [0.3, 0.3, 0.4],  # top-1 {2}        top-2 {2, 0} (tie 0/1 → 0)
    ]
)
Y = torch.tensor([0, 0, 0, 1, 1, 2])


def test_indicators_by_hand_k1():
    ind = soft_label_indicators(SOFT, Y, 1)
    # truth outside top-1 for samples 1, 2, 4 → Δ = 3/6
    assert ind.delta == pytest.approx(0.5)
    # class 0: wrong label 1 in top-1 once, 2 once (of 3) → 1/3; class 1: label 0 once of 2 → 1/2; class 2: 0
    assert ind.gamma == pytest.approx(0.5)
    # global: label 0 wrong-in-set 1/6, label 1 1/6, label 2 1/6
    assert ind.gamma_global == pytest.approx(1 / 6)
    assert ind.top1_acc == pytest.approx(0.5)
    assert not ind.sufficient and ind.total == pytest.approx(1.0)


def test_indicators_by_hand_k2():
    ind = soft_label_indicators(SOFT, Y, 2)
    assert ind.delta == pytest.approx(1 / 6)  # only sample 2 misses its label
    # class 0: label 1 in all three sets → 1; class 1: label 0 in both → 1; class 2: label 0 → 1
    assert ind.gamma == pytest.approx(1.0)
    assert ind.gamma_global == pytest.approx(
        3 / 6
    )  # label 1 is a wrong member for samples 0, 1, 2; label 0 for 3, 4, 5
    assert best_k_indicators(SOFT, Y, (1, 2)).k == 1


def test_topk_sets_break_ties_by_class_index():
    sets = topk_sets(torch.tensor([[0.4, 0.2, 0.2, 0.2]]), 2)
    assert sets.tolist() == [[True, True, False, False]]


def test_sufficiency_check():
    assert is_sufficient(0.2, 0.5) and not is_sufficient(0.5, 0.5)
    with pytest.raises(ValueError, match="probabilities"):
        is_sufficient(-0.1, 0.2)


def test_topk_partial_loss_reduces_to_cross_entropy_for_k1():
    logits = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 3, 0])
    sets = F.one_hot(y, 4).bool()
    assert topk_partial_loss(logits, sets).item() == pytest.approx(F.cross_entropy(logits, y).item(), abs=1e-6)


def test_biased_soft_labels_are_always_wrong_at_top1_and_hit_the_target_delta():
    y = torch.arange(3000) % 10
    soft = biased_soft_labels(y, 10, delta=0.4, rho=0.0, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(soft.sum(1), torch.ones(3000))
    ind = soft_label_indicators(soft, y, 3)
    assert ind.top1_acc == 0.0
    assert ind.delta == pytest.approx(0.4, abs=0.03)
    confused = biased_soft_labels(y, 10, delta=0.0, rho=1.0, confuser_rank=3, generator=torch.Generator())
    assert soft_label_indicators(confused, y, 3).gamma == 1.0
    assert bool((confused.argsort(1, descending=True)[:, 2] == (y + 1) % 10).all())


def test_partial_and_noise_producers():
    y = torch.arange(5000) % 10
    soft, sets = partial_label_soft_labels(y, 10, delta=0.3, gamma=0.2, generator=torch.Generator().manual_seed(0))
    assert bool(sets.any(1).all()) and torch.allclose(soft.sum(1), torch.ones(5000))
    assert (~sets[torch.arange(5000), y]).float().mean().item() == pytest.approx(0.3, abs=0.02)
    noisy = additive_noise_soft_labels(y, 10, sigma=0.5, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(noisy.sum(1), torch.ones(5000)) and bool((noisy >= 0).all())
    clean = additive_noise_soft_labels(y, 10, sigma=0.0)
    assert torch.equal(clean, F.one_hot(y, 10).float())


def test_choose_k_by_hand():
    assert choose_k(SOFT, Y, (1, 2)) == 1  # Δ+γ: k=1 → 0.5 + 0.5; k=2 → 1/6 + 1
    # truth always second, first label a different wrong one per sample: k=1 → Δ=1, γ=1; k=2 → Δ=0, γ=1
    y = torch.tensor([0, 1, 2, 3])
    soft = torch.full((4, 4), 0.05)
    soft[torch.arange(4), (y + 1) % 4] = 0.6
    soft[torch.arange(4), y] = 0.3
    assert choose_k(soft, y, (1, 2, 3)) == 2


def test_class_margins_by_hand():
    sets = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.bool)
    margins = class_margins(sets, torch.tensor([0, 0, 1, 1]))
    # class 0: freq (1, .5, 0) → 1 − .5; class 1: freq (.5, .5, .5) → .5 − .5; class 2: no samples
    assert margins[:2].tolist() == pytest.approx([0.5, 0.0]) and torch.isnan(margins[2])


@pytest.mark.parametrize(("odd_confuser", "identifiable"), [(0.3, True), (0.6, False)])
def test_class_conditional_sets_exceed_the_bound_yet_stay_identifiable(odd_confuser, identifiable):
    c, n = 10, 40_000
    y = torch.arange(n) % c
    even = torch.arange(c) % 2 == 0
    p_true = torch.where(even, torch.tensor(1.0), torch.tensor(0.45))
    p_conf = torch.where(even, torch.tensor(0.9), torch.tensor(odd_confuser))
    soft, sets = class_conditional_sets(
        y, c, p_true=p_true, p_confuser=p_conf, p_other=0.1, generator=torch.Generator().manual_seed(0)
    )
    delta, gamma, _ = set_indicators(sets, y)
    assert delta == pytest.approx(0.5 * 0.55, abs=0.01)
    assert gamma == pytest.approx(0.9, abs=0.015)
    assert delta + gamma > 1.1  # far outside the paper's sufficient condition
    margins = class_margins(sets, y)
    assert margins[::2].tolist() == pytest.approx([0.1] * 5, abs=0.02)  # even: 1 − 0.9
    expected_odd = 0.45 - odd_confuser
    assert margins[1::2].tolist() == pytest.approx([expected_odd] * 5, abs=0.035)  # empty sets add ~0.02
    assert bool((margins > 0).all()) is identifiable
    assert torch.allclose(soft.sum(1), torch.ones(n))


def test_rank_second_targets_by_hand():
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    score = torch.tensor([3.0, 1.0, 2.0, 0.0, 5.0, 4.0])
    targets, first = rank_second_targets(y, score, 4, first=0.5, second=0.35)
    # class 0 ranks (1, 2, 0) by score → buckets 0, 1, 2 → first = (0 + 1 + b) mod 4; class 1 ranks (3, 5, 4)
    assert first.tolist() == [3, 1, 2, 2, 0, 3]
    assert targets[0].tolist() == pytest.approx([0.35, 0.075, 0.075, 0.5])
    assert targets[4].tolist() == pytest.approx([0.5, 0.35, 0.075, 0.075])
    assert bool((targets.argmax(1) != y).all())


def test_trained_teacher_reports_top1_and_top2_on_the_images_it_labels_and_on_test():
    (run,) = run_producer("digits", 0, "teacher", quick_settings("digits"))
    m = run.metrics
    assert run.config["teacher_targets"] == [0.6, 0.3]
    assert 0.0 <= m["label_top1"] <= m["teacher_train_top2"] <= 1.0
    assert 0.0 <= m["teacher_test_top1"] <= m["teacher_test_top2"] <= 1.0
