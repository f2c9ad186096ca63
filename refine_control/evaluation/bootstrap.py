"""Paired bootstrap intervals over evaluation images.

A model and its teacher are scored on the same images (same prompts, controls and noise), so the per-image scores
are paired: resampling whole images, both sides together, keeps that pairing and gives the uncertainty that comes
from which images were drawn. It says nothing about training seeds; those are separate runs.

Percentile intervals (Efron & Tibshirani, "An Introduction to the Bootstrap", ch. 13), with a fixed seed so that
a report is reproducible.
"""

import numpy as np

RESAMPLES = 1000
LEVEL = 0.95


def _paired(model: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    model, reference = np.asarray(model, np.float64), np.asarray(reference, np.float64)
    if model.ndim != 1 or model.shape != reference.shape or model.size == 0:
        raise ValueError(f"paired scores need two equal non-empty 1-d arrays, got {model.shape} and {reference.shape}")
    if not (np.isfinite(model).all() and np.isfinite(reference).all()):
        raise ValueError("paired scores must be finite")
    return model, reference


def _resampled_means(
    model: np.ndarray, reference: np.ndarray, resamples: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Means of both sides over `resamples` resamplings of the image indices (the same indices for both)."""
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    index = np.random.default_rng(seed).integers(0, model.size, (resamples, model.size))
    return model[index].mean(axis=1), reference[index].mean(axis=1)


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def ratio_interval(
    model: np.ndarray,
    reference: np.ndarray,
    *,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
    seed: int = 0,
) -> tuple[float, float]:
    """Interval of mean(model) / mean(reference) (a "kept" ratio) from paired per-image scores.

    A resample whose reference mean is 0 has no ratio and is left out; if every one is, the ratio is undefined
    (ValueError)."""
    model, reference = _paired(model, reference)
    numerator, denominator = _resampled_means(model, reference, resamples, seed)
    defined = denominator != 0
    if not defined.any():
        raise ValueError("the reference's mean is 0 in every resample: the ratio is undefined")
    return _percentiles(numerator[defined] / denominator[defined], level)


def difference_interval(
    model: np.ndarray,
    reference: np.ndarray,
    *,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
    seed: int = 0,
) -> tuple[float, float]:
    """Interval of mean(model) - mean(reference) from paired per-image scores (an arm difference)."""
    model, reference = _paired(model, reference)
    a, b = _resampled_means(model, reference, resamples, seed)
    return _percentiles(a - b, level)
