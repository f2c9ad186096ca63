"""The preprocessors, the server's modules and the torch-free runtime import and run where OpenCV does not (the
device install); tests/test_preprocess_opencv.py compares the results with OpenCV's."""

import subprocess
import sys

import numpy as np

from refine_control.canny import canny, hysteresis


def test_builtin_preprocessors_and_server_run_with_opencv_blocked():
    code = """
import sys
sys.modules["cv2"] = None  # `import cv2` raises ImportError from here on
import numpy as np
from refine_control.preprocess import PREPROCESSORS, get_preprocessor
import refine_control.serve.engine, refine_control.serve.schemas, refine_control.runtime
image = np.random.default_rng(0).integers(0, 256, (48, 40, 3), dtype=np.uint8)
for name in PREPROCESSORS.names():
    out = get_preprocessor(name)(image, np.random.default_rng(1))
    assert out.shape == (48, 40, 3) and out.dtype == np.float32, name
print("ok", ",".join(PREPROCESSORS.names()))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok canny,lineart,shuffle,inpaint"


def test_canny_thresholds_a_step_edge():
    image = np.zeros((12, 16), np.uint8)
    image[:, 8:] = 255  # Sobel magnitude 1020 across the step: one column survives suppression
    edges = canny(image, 100, 200)
    assert set(np.unique(edges)) == {0, 255}
    assert (edges[:, 7] == 255).all() and edges.sum() == 255 * 12
    faint = np.zeros((12, 16), np.uint8)
    faint[:, 8:] = 20  # magnitude 80, below the low threshold
    assert not canny(faint, 100, 200).any()


def test_hysteresis_keeps_only_what_connects_to_a_seed():
    candidates = np.zeros((6, 9), bool)
    candidates[1, 1:4] = True  # a chain with a seed at one end
    candidates[2, 4] = True  # diagonal continuation (8-connected)
    candidates[4, 6:9] = True  # a chain without a seed
    seeds = np.zeros_like(candidates)
    seeds[1, 1] = True
    seeds[0, 0] = True  # a seed that is not a candidate is ignored
    kept = hysteresis(candidates, seeds)
    expected = np.zeros_like(candidates)
    expected[1, 1:4] = True
    expected[2, 4] = True
    np.testing.assert_array_equal(kept, expected)


def _flood(candidates: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """Reference: a pixel-by-pixel 8-connected flood fill from the seeds, as OpenCV's stack walk does."""
    h, w = candidates.shape
    kept = np.zeros_like(candidates)
    stack = [tuple(p) for p in np.argwhere(seeds & candidates)]
    for y, x in stack:
        kept[y, x] = True
    while stack:
        y, x = stack.pop()
        for ny in range(max(0, y - 1), min(h, y + 2)):
            for nx in range(max(0, x - 1), min(w, x + 2)):
                if candidates[ny, nx] and not kept[ny, nx]:
                    kept[ny, nx] = True
                    stack.append((ny, nx))
    return kept


def test_hysteresis_equals_a_flood_fill_on_random_and_long_chains():
    rng = np.random.default_rng(0)
    for density in (0.2, 0.45, 0.6):
        candidates = rng.random((64, 80)) < density
        seeds = rng.random((64, 80)) < 0.01
        np.testing.assert_array_equal(hysteresis(candidates, seeds), _flood(candidates, seeds))
    serpentine = np.zeros((41, 30), bool)  # one chain snaking through the whole image, seeded at its far end
    serpentine[::2] = True
    for row in range(1, 41, 2):
        serpentine[row, 29 if row % 4 == 1 else 0] = True
    seeds = np.zeros_like(serpentine)
    seeds[40, 29] = True
    kept = hysteresis(serpentine, seeds)
    assert kept.sum() == serpentine.sum()
    np.testing.assert_array_equal(kept, _flood(serpentine, seeds))
