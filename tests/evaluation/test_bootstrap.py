import numpy as np
import pytest

from refine_control.evaluation.bootstrap import difference_interval, ratio_interval


def test_an_exact_ratio_has_a_zero_width_interval():
    teacher = np.random.default_rng(0).uniform(0.2, 1.0, 50)
    low, high = ratio_interval(0.9 * teacher, teacher)
    assert low == pytest.approx(0.9, abs=1e-12) and high == pytest.approx(0.9, abs=1e-12)
    assert difference_interval(teacher, teacher) == (0.0, 0.0)


def test_same_seed_same_interval_and_a_different_seed_moves_it():
    rng = np.random.default_rng(1)
    teacher = rng.uniform(0.3, 0.7, 64)
    model = teacher + rng.normal(0, 0.1, 64)
    assert ratio_interval(model, teacher, seed=3) == ratio_interval(model, teacher, seed=3)
    assert ratio_interval(model, teacher, seed=3) != ratio_interval(model, teacher, seed=4)


def test_interval_matches_the_delta_method_width_and_holds_the_sample_ratio():
    """Large n: the percentile interval's width is close to 2 × 1.96 × the delta-method standard error of a ratio
    of paired means, and it contains the sample ratio."""
    rng = np.random.default_rng(2)
    n = 400
    teacher = rng.uniform(0.4, 0.8, n)
    model = 0.95 * teacher + rng.normal(0, 0.08, n)
    ratio = model.mean() / teacher.mean()
    low, high = ratio_interval(model, teacher)
    assert low < ratio < high
    residual = (model - ratio * teacher) / teacher.mean()  # linearisation of mean(a) / mean(b)
    delta_width = 2 * 1.96 * residual.std(ddof=1) / np.sqrt(n)
    assert high - low == pytest.approx(delta_width, rel=0.15)


def test_coverage_is_near_the_nominal_level():
    """Over 200 simulated evaluations of 80 paired images each, the 95% interval of the difference holds the true
    difference (0.05) in 90-99% of them."""
    rng = np.random.default_rng(3)
    hits = 0
    for trial in range(200):
        teacher = rng.uniform(0.0, 1.0, 80)
        model = teacher + 0.05 + rng.normal(0, 0.2, 80)
        low, high = difference_interval(model, teacher, resamples=400, seed=trial)
        hits += low <= 0.05 <= high
    assert 0.90 <= hits / 200 <= 0.99


def test_pairing_makes_the_interval_narrower_than_independent_samples():
    """Image difficulty shared by both models cancels in a paired resample: the same scores with the pairing
    broken (the teacher's shuffled) give a much wider interval."""
    rng = np.random.default_rng(4)
    difficulty = rng.uniform(0.1, 0.9, 100)
    model, teacher = difficulty + rng.normal(0, 0.02, 100), difficulty + rng.normal(0, 0.02, 100)
    paired = ratio_interval(model, teacher)
    unpaired = ratio_interval(model, rng.permutation(teacher))
    assert (paired[1] - paired[0]) * 5 < unpaired[1] - unpaired[0]


def test_bad_input():
    with pytest.raises(ValueError, match="equal non-empty"):
        ratio_interval(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="finite"):
        difference_interval(np.array([1.0, np.inf]), np.ones(2))
    with pytest.raises(ValueError, match="undefined"):
        ratio_interval(np.ones(5), np.zeros(5))
    with pytest.raises(ValueError, match="level"):
        ratio_interval(np.ones(5), np.ones(5), level=1.5)
