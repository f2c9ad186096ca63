import math

import numpy as np
import pytest

from refine_control.builtin.shapes import BACKGROUND, ShapeSpec, make_sample
from refine_control.evaluation import metrics as M


def _square_edges(offset: int = 0) -> np.ndarray:
    edges = np.zeros((32, 32), bool)
    edges[8 + offset, 8:24] = edges[23 + offset, 8:24] = True
    edges[8 + offset : 24 + offset, 8] = edges[8 + offset : 24 + offset, 23] = True
    return edges


def test_psnr_identical_is_inf_and_known_error_is_exact():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 250, (2, 16, 16, 3), dtype=np.uint8)
    assert np.all(np.isinf(M.psnr(image, image)))
    shifted = image + 1  # MSE exactly 1 (on the 0..255 scale)
    np.testing.assert_allclose(M.psnr(image, shifted), 20 * math.log10(255.0), rtol=1e-6)


def test_ssim_identical_is_one_and_noise_is_lower():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    np.testing.assert_allclose(M.ssim(image, image), 1.0, atol=1e-6)

    def noisy(amount: int) -> np.ndarray:
        return np.clip(image.astype(int) + rng.integers(-amount, amount + 1, image.shape), 0, 255).astype(np.uint8)

    little, much = M.ssim(image, noisy(10)), M.ssim(image, noisy(120))
    assert np.all(much < little) and np.all(little < 1.0)


def test_ssim_works_on_images_smaller_than_the_window():
    image = np.full((1, 8, 8, 3), 100, np.uint8)
    np.testing.assert_allclose(M.ssim(image, image), 1.0, atol=1e-6)


def test_perfect_edge_map_scores_one():
    assert M.edge_prf(_square_edges(), _square_edges()) == (1.0, 1.0, 1.0)


def test_blank_prediction_scores_zero():
    assert M.edge_prf(np.zeros((32, 32), bool), _square_edges()) == (0.0, 0.0, 0.0)


def test_edges_within_one_pixel_match_and_farther_ones_do_not():
    assert M.edge_prf(_square_edges(1), _square_edges())[2] == 1.0
    # Shifted 3 rows down, counted by hand on the 60-pixel outline: of the predicted pixels, the two sides within
    # the reference's rows 8..23 (+1) match (rows 11..24: 2 × 14) plus the inner two of the top row (cols 9 and
    # 22): 30 of 60. The reference shifted 3 rows up is the mirror case.
    assert M.edge_prf(_square_edges(3), _square_edges()) == (0.5, 0.5, 0.5)


def test_half_the_edges_gives_the_recall_counted_by_hand():
    half = _square_edges()
    half[:, 16:] = False
    precision, recall, _ = M.edge_prf(half, _square_edges())
    assert precision == 1.0
    # By hand: the kept left half reaches col 15, so within 1 px it covers reference cols 8..16: 9 pixels of the
    # top row, 9 of the bottom and 14 of the left side between them: 32 of the 60.
    assert recall == 32 / 60


def test_two_empty_edge_maps_agree():
    assert M.edge_prf(np.zeros((8, 8), bool), np.zeros((8, 8), bool)) == (1.0, 1.0, 1.0)


def test_the_render_reproduces_its_control_exactly():
    sample = make_sample(ShapeSpec("star", "purple", "checkered", 18, 30, 32))
    assert M.edge_prf(M.edges(sample.image), sample.control[..., 0] > 0.5) == (1.0, 1.0, 1.0)


def test_mask_iou_cases():
    a = np.zeros((10, 10), bool)
    a[:, :5] = True
    b = np.zeros((10, 10), bool)
    b[:, 5:] = True
    assert M.mask_iou(a, a) == 1.0
    assert M.mask_iou(a, b) == 0.0
    c = np.zeros((10, 10), bool)
    c[:, :10] = True
    assert M.mask_iou(a, c) == 0.5
    assert M.mask_iou(np.zeros_like(a), np.zeros_like(a)) == 1.0


def test_foreground_mask_recovers_the_true_mask_of_every_colour_and_texture():
    for colour in ("red", "yellow", "green", "cyan", "blue", "purple"):
        for texture in ("solid", "dotted"):
            sample = make_sample(ShapeSpec("diamond", colour, texture, 15, 30, 30))
            assert M.mask_iou(M.foreground_mask(sample.image, BACKGROUND), sample.mask) == 1.0
    blank = np.full((64, 64, 3), BACKGROUND, np.uint8)
    assert not M.foreground_mask(blank, BACKGROUND).any()


def _mean_lab_by_formula(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A second implementation of the mean CIELAB colour: sRGB (IEC 61966-2-1) → XYZ (D65) → L*a*b* (CIE 1976)."""
    c = image[mask].astype(np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    to_xyz = np.array([[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]])
    xyz = linear @ to_xyz.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    lab = np.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], axis=1)
    return lab.mean(axis=0)


def test_colour_error_matches_the_cie76_formula():
    red = make_sample(ShapeSpec("circle", "red", "solid", 15, 30, 30))
    blue = make_sample(ShapeSpec("circle", "blue", "solid", 15, 30, 30))
    assert M.colour_error(red.image, red.image, red.mask) == 0.0
    slightly = np.clip(red.image.astype(int) + 3, 0, 255).astype(np.uint8)
    for image in (blue.image, slightly):
        expected = np.linalg.norm(_mean_lab_by_formula(image, red.mask) - _mean_lab_by_formula(red.image, red.mask))
        assert M.colour_error(image, red.image, red.mask) == pytest.approx(expected, rel=1e-4)


def test_colour_error_needs_a_mask():
    with pytest.raises(ValueError, match="non-empty"):
        M.mean_lab(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), bool))


def test_finite_mean():
    assert M.finite_mean(np.array([1.0, 3.0])) == 2.0
    assert math.isinf(M.finite_mean(np.array([1.0, np.inf])))
    assert math.isnan(M.finite_mean(np.array([])))
