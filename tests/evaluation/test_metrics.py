import math

import cv2
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


def test_strict_edges_need_the_exact_pixels():
    # One row down: every pixel is within the 1-px radius, but only the two sides' 15 rows in common (30 of 60
    # pixels each way) are the same pixels.
    assert M.edge_prf(_square_edges(1), _square_edges()) == (1.0, 1.0, 1.0)
    assert M.edge_prf_strict(_square_edges(1), _square_edges()) == (0.5, 0.5, 0.5)
    assert M.edge_prf_strict(_square_edges(), _square_edges()) == (1.0, 1.0, 1.0)
    assert M.edge_prf_strict(np.zeros((32, 32), bool), _square_edges()) == (0.0, 0.0, 0.0)


def test_chamfer_distance_counted_by_hand():
    assert M.edge_chamfer(_square_edges(), _square_edges()) == 0.0
    # One row down: the 14 inner pixels of the new top row and the 16 of the new bottom row are 1 px from the
    # reference (30 of 60: mean 0.5); the mirror case is the same.
    assert M.edge_chamfer(_square_edges(1), _square_edges()) == pytest.approx(0.5)
    # Three rows down, by hand: the new top row's 14 inner pixels lie 1, 2, 3, ..., 3, 2, 1 px from the sides (36),
    # the new bottom row's 14 inner ones 3 px from the old bottom row (42), the sides' 3 overhanging rows 1, 2, 3 px
    # (12 for both); 90 / 60 each way.
    assert M.edge_chamfer(_square_edges(3), _square_edges()) == pytest.approx(1.5)
    empty = np.zeros((32, 32), bool)
    assert M.edge_chamfer(empty, empty) == 0.0
    assert M.edge_chamfer(empty, _square_edges()) == pytest.approx(math.hypot(32, 32))
    assert M.edge_chamfer(_square_edges(), empty) == pytest.approx(math.hypot(32, 32))


@pytest.fixture(scope="module")
def truth():
    """16 held-out shapes: their renders and (exactly matching) Canny controls."""
    from refine_control.builtin.shapes import sample_specs

    samples = [make_sample(s) for s in sample_specs("test", 16, 0)]
    return np.stack([s.image for s in samples]), np.stack([s.control[..., 0] > 0.5 for s in samples])


def _mean_scores(images: np.ndarray, controls: np.ndarray) -> dict[str, float]:
    return {k: float(v.mean()) for k, v in M.edge_scores(images, controls).items()}


def test_ground_truth_scores_perfectly_on_every_edge_score(truth):
    scores = _mean_scores(*truth)
    assert scores.pop("edge_chamfer_px") == 0.0
    assert set(scores.values()) == {1.0}


def test_strict_scores_fall_on_a_blurred_ground_truth_where_the_1px_f1_does_not(truth):
    images, controls = truth
    blurred = _mean_scores(np.stack([cv2.GaussianBlur(i, (5, 5), 0) for i in images]), controls)
    assert blurred["edge_f1"] >= 0.99  # the lenient score cannot see a 5×5 blur
    assert blurred["edge_f1_strict"] <= 0.9 and blurred["edge_chamfer_px"] >= 0.1


def test_strict_scores_fall_on_a_shifted_ground_truth(truth):
    images, controls = truth
    one, two = (_mean_scores(np.roll(images, k, axis=2), controls) for k in (1, 2))
    assert one["edge_f1"] == 1.0 and one["edge_f1_strict"] <= 0.5
    assert two["edge_f1_strict"] <= 0.35 and two["edge_f1_strict"] < two["edge_f1"] - 0.3
    assert 0.5 <= one["edge_chamfer_px"] < two["edge_chamfer_px"]
    assert two["edge_chamfer_px"] >= 1.0


def test_strict_scores_fall_more_on_a_noisy_ground_truth(truth):
    images, controls = truth
    noise = np.random.default_rng(0).normal(0, 8, images.shape)
    noisy = _mean_scores(np.clip(images + noise, 0, 255).astype(np.uint8), controls)
    assert noisy["edge_recall"] >= 0.99  # stray edges only: every true edge still has one within 1 px
    assert noisy["edge_recall_strict"] <= 0.85  # but many of them moved
    assert 1 - noisy["edge_f1_strict"] >= 1.5 * (1 - noisy["edge_f1"])
    assert noisy["edge_chamfer_px"] >= 0.5


def test_strict_scores_can_be_left_out():
    images = np.zeros((2, 16, 16, 3), np.uint8)
    scores = M.edge_scores(images, np.zeros((2, 16, 16), bool), strict=False)
    assert set(scores) == {"edge_precision", "edge_recall", "edge_f1"}
