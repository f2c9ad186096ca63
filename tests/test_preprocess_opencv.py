"""The numpy preprocessors against OpenCV, which they replace (the device install carries no OpenCV; training
installs it with `[train]`, so these run in the dev environment).

Measured here (OpenCV 5.0, constraints.txt): Canny is equal pixel for pixel on every fixture and setting; line art
within 2e-7; content shuffle within 1/255 on under 0.02% of the values (float rounding in the cubic flow field);
random inpainting masks overlap OpenCV's with a mean IoU of 0.98 (thick strokes are rasterised differently).
"""

import numpy as np
import pytest
from PIL import Image

from refine_control import imageops
from refine_control.builtin.shapes import render, sample_specs
from refine_control.canny import canny
from refine_control.preprocess import get_preprocessor, random_mask

cv2 = pytest.importorskip("cv2", reason="OpenCV comes with [train]; the comparison needs it")
skimage_data = pytest.importorskip("skimage.data")
needs_opencv5 = pytest.mark.skipif(
    int(cv2.__version__.split(".")[0]) < 5, reason="OpenCV 4 remaps in 5-bit fixed point, OpenCV 5 in float"
)


def _digits() -> np.ndarray:
    from sklearn.datasets import load_digits

    digits = (load_digits().images[:16] * 15).astype(np.uint8)
    grid = np.concatenate([np.concatenate(list(digits[r * 4 : r * 4 + 4]), axis=1) for r in range(4)], axis=0)
    return np.asarray(Image.fromarray(grid).resize((256, 256), Image.BICUBIC))


def _shapes() -> np.ndarray:
    renders = [render(spec)[0] for spec in sample_specs("test", 16, seed=3)]
    return np.concatenate([np.concatenate(renders[r * 4 : r * 4 + 4], axis=1) for r in range(4)], axis=0)


@pytest.fixture(scope="module")
def fixtures() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "astronaut": skimage_data.astronaut(),  # RGB photographs
        "coffee": skimage_data.coffee(),
        "camera": skimage_data.camera(),  # grey
        "digits": _digits(),  # scikit-learn digits, upscaled (grey)
        "shapes": _shapes(),  # the builtin dataset's renders
        "noise": rng.integers(0, 256, (97, 131, 3), dtype=np.uint8),  # odd sizes, every direction and tie
        "strip": rng.integers(0, 256, (1, 7, 3), dtype=np.uint8),
    }


@pytest.mark.parametrize(
    ("low", "high", "l2"), [(100, 200, False), (50, 150, False), (100, 200, True), (30.5, 90.7, False)]
)
def test_canny_equals_opencv_pixel_for_pixel(fixtures, low, high, l2):
    edge_counts = []
    for name, image in fixtures.items():
        ours = canny(image, low, high, l2_gradient=l2)
        theirs = cv2.Canny(image, low, high, L2gradient=l2)
        np.testing.assert_array_equal(ours, theirs, err_msg=name)
        edge_counts.append(int((theirs > 0).sum()))
    assert min(edge_counts[:5]) > 1000  # the fixtures have real edges to agree on


def test_canny_preprocessor_is_opencv_canny_100_200(fixtures):
    image = fixtures["astronaut"]
    control = get_preprocessor("canny")(image)
    np.testing.assert_array_equal(control, np.repeat(cv2.Canny(image, 100, 200)[..., None] / 255.0, 3, axis=2))


def test_canny_swaps_reversed_thresholds(fixtures):
    image = fixtures["coffee"]
    np.testing.assert_array_equal(canny(image, 200, 100), cv2.Canny(image, 200, 100))


def test_gaussian_blur_and_cubic_resize_match_opencv_up_to_float_rounding(fixtures):
    for image in (fixtures["astronaut"], fixtures["strip"], fixtures["noise"][:20, :13]):
        x = image.astype(np.float32)
        assert np.abs(imageops.gaussian_blur(x, 6.0) - cv2.GaussianBlur(x, (0, 0), 6.0)).max() < 2e-4
    coarse = np.random.default_rng(1).uniform(0, 1, (8, 8)).astype(np.float32)
    for w, h in ((512, 512), (600, 400), (7, 13)):
        ours = imageops.resize_cubic(coarse, w, h)
        assert np.abs(ours - cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)).max() < 1e-6


@needs_opencv5
def test_remap_linear_matches_opencv_but_for_rare_ties(fixtures):
    rng = np.random.default_rng(2)
    differing, total = 0, 0
    for image in (fixtures["astronaut"], fixtures["coffee"], fixtures["noise"]):
        h, w = image.shape[:2]
        map_x = rng.uniform(0, w - 1, (h, w)).astype(np.float32)
        map_y = rng.uniform(0, h - 1, (h, w)).astype(np.float32)
        map_x[0, :3], map_y[0, :3] = [0, w - 1, w - 1], [0, h - 1, 0]  # the corners, exactly
        ours = imageops.remap_linear(image, map_x, map_y).astype(np.int16)
        theirs = cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR).astype(np.int16)
        assert np.abs(ours - theirs).max() <= 1
        differing, total = differing + int((ours != theirs).sum()), total + ours.size
    assert differing / total < 1e-5


def _opencv_lineart(image: np.ndarray, sigma: float = 6.0, strength: float = 8.0) -> np.ndarray:
    x = image.astype(np.float32)
    intensity = np.min(cv2.GaussianBlur(x, (0, 0), sigma) - x, axis=2).clip(0, 255)
    strong = intensity[intensity > 8]
    scale = max(16.0, float(np.median(strong))) if strong.size else 16.0
    return np.repeat((intensity / scale * strength).clip(0, 255)[..., None] / 255.0, 3, axis=2)


def _opencv_shuffle(image: np.ndarray, rng: np.random.Generator, cells: int = 8) -> np.ndarray:
    h, w = image.shape[:2]
    coarse = rng.uniform(0, 1, size=(2, cells, cells)).astype(np.float32)
    flow_x = cv2.resize(coarse[0], (w, h), interpolation=cv2.INTER_CUBIC) * (w - 1)
    flow_y = cv2.resize(coarse[1], (w, h), interpolation=cv2.INTER_CUBIC) * (h - 1)
    return cv2.remap(image, flow_x.clip(0, w - 1), flow_y.clip(0, h - 1), cv2.INTER_LINEAR) / 255.0


@needs_opencv5
def test_lineart_and_shuffle_match_their_opencv_versions(fixtures):
    for name in ("astronaut", "coffee", "shapes"):
        image = fixtures[name]
        assert np.abs(get_preprocessor("lineart")(image) - _opencv_lineart(image)).max() < 1e-6, name
        for seed in range(2):
            ours = get_preprocessor("shuffle")(image, np.random.default_rng(seed))
            diff = np.abs(ours - _opencv_shuffle(image, np.random.default_rng(seed)))
            assert diff.max() <= 1 / 255 + 1e-6 and (diff > 0.5 / 255).mean() < 5e-4, name


def test_strokes_and_random_masks_overlap_opencvs():
    rng = np.random.default_rng(5)
    ious, agreement = [], []
    for _ in range(200):
        points = np.stack([rng.integers(0, 256, 4), rng.integers(0, 256, 4)], axis=1).astype(np.int32)
        thickness = int(rng.integers(1, 40))
        ours, theirs = np.zeros((256, 256), np.uint8), np.zeros((256, 256), np.uint8)
        imageops.draw_polyline(ours, points, thickness)
        cv2.polylines(theirs, [points], isClosed=False, color=1, thickness=thickness)
        ious.append((ours & theirs).sum() / (ours | theirs).sum())
        agreement.append((ours == theirs).mean())
    assert np.mean(ious) > 0.97 and np.mean(agreement) > 0.995 and min(ious) > 0.75

    def opencv_mask(h: int, w: int, rng: np.random.Generator) -> np.ndarray:  # the former OpenCV random_mask
        mask = np.zeros((h, w), np.uint8)
        target = rng.uniform(0.1, 0.5)
        for _ in range(64):
            if mask.mean() >= target:
                break
            if rng.random() < 0.5:
                rh, rw = int(rng.integers(h // 8 + 1, h // 2 + 2)), int(rng.integers(w // 8 + 1, w // 2 + 2))
                y, x = int(rng.integers(0, max(1, h - rh))), int(rng.integers(0, max(1, w - rw)))
                mask[y : y + rh, x : x + rw] = 1
            else:
                points = np.stack([rng.integers(0, w, 4), rng.integers(0, h, 4)], axis=1).astype(np.int32)
                thickness = int(rng.integers(max(1, min(h, w) // 16), max(2, min(h, w) // 6)))
                cv2.polylines(mask, [points], isClosed=False, color=1, thickness=thickness)
        return mask

    mask_ious = []
    for seed in range(100):
        ours, theirs = (
            random_mask(128, 96, np.random.default_rng(seed)),
            opencv_mask(128, 96, np.random.default_rng(seed)),
        )
        mask_ious.append((ours & theirs).sum() / (ours | theirs).sum())
    assert np.mean(mask_ious) > 0.97
