"""The few image operations the preprocessors need, in numpy alone (the device install carries no OpenCV).

Each follows the OpenCV call it replaces closely enough to give the same control maps;
tests/test_preprocess_opencv.py measures the agreement with OpenCV where it is installed: `gaussian_blur` is
`cv2.GaussianBlur(x, (0, 0), sigma)` on float32 up to float rounding, `resize_cubic` is
`cv2.resize(..., INTER_CUBIC)` up to float rounding, `remap_linear` is OpenCV 5's `cv2.remap(..., INTER_LINEAR)` but
for rare rounding ties, and `draw_polyline` is a round-capped thick polyline like `cv2.polylines` (which differs
from it only in some pixels along the stroke's border).
"""

import itertools

import numpy as np


def gaussian_kernel(sigma: float, size: int) -> np.ndarray:
    """A normalised 1-D Gaussian of `size` taps (float64, rounded through float32 as OpenCV's float kernels are)."""
    x = np.arange(size, dtype=np.float64) - (size - 1) * 0.5
    k = np.exp(-0.5 / (sigma * sigma) * x * x)
    return (k / k.sum()).astype(np.float32).astype(np.float64)


def _reflect101(i: np.ndarray, n: int) -> np.ndarray:
    """Indices folded into [0, n) by reflection without repeating the edge (OpenCV's BORDER_REFLECT_101)."""
    if n == 1:
        return np.zeros_like(i)
    period = 2 * (n - 1)
    i = np.mod(i, period)
    return np.where(i < n, i, period - i)


def _blur_matrix(n: int, kernel: np.ndarray) -> np.ndarray:
    """(n, n) matrix applying the symmetric `kernel` along one axis, the border reflected (BORDER_REFLECT_101)."""
    radius = len(kernel) // 2
    rows = np.repeat(np.arange(n), len(kernel))
    cols = _reflect101((np.arange(n)[:, None] + np.arange(-radius, radius + 1)[None, :]).ravel(), n)
    matrix = np.zeros((n, n), np.float64)
    np.add.at(matrix, (rows, cols), np.tile(kernel, n))
    return matrix


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of a float (H, W) or (H, W, C) image, the kernel size OpenCV picks for float input (8σ + 1),
    as two matrix products (one per axis), which numpy runs fast."""
    size = int(np.round(sigma * 4 * 2 + 1)) | 1
    kernel = gaussian_kernel(sigma, size)
    x = image.astype(np.float64)
    h, w = x.shape[:2]
    rows = (_blur_matrix(h, kernel) @ x.reshape(h, -1)).reshape(x.shape)
    out = np.einsum("xv,hv...->hx...", _blur_matrix(w, kernel), rows, optimize=True)
    return out.astype(np.float32)


def _cubic_weights(t: np.ndarray, a: float = -0.75) -> np.ndarray:
    """Keys cubic weights (N, 4) for fractional offsets `t` (N,), OpenCV's a = -0.75."""
    t = t.astype(np.float64)
    w0 = ((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a
    w1 = ((a + 2) * t - (a + 3)) * t * t + 1
    w2 = ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1
    return np.stack([w0, w1, w2, 1.0 - w0 - w1 - w2], axis=1)


def _cubic_matrix(src: int, dst: int) -> np.ndarray:
    """(dst, src) interpolation matrix: pixel centres aligned, source indices clamped (replicated border)."""
    centre = (np.arange(dst) + 0.5) * (src / dst) - 0.5
    base = np.floor(centre).astype(np.int64)
    weights = _cubic_weights(centre - base)
    matrix = np.zeros((dst, src), np.float64)
    for k in range(4):
        np.add.at(matrix, (np.arange(dst), np.clip(base - 1 + k, 0, src - 1)), weights[:, k])
    return matrix


def resize_cubic(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bicubic resize of a float (H, W) image to (height, width), as `cv2.resize(x, (w, h), INTER_CUBIC)`."""
    h, w = image.shape
    out = _cubic_matrix(h, height) @ image.astype(np.float64) @ _cubic_matrix(w, width).T
    return out.astype(np.float32)


def remap_linear(image: np.ndarray, map_x: np.ndarray, map_y: np.ndarray) -> np.ndarray:
    """Bilinear `image[map_y, map_x]` of a uint8 (H, W, C) image for float maps (h, w) inside the image: float32
    interpolation along x then y, rounded to nearest, as OpenCV 5's `cv2.remap(..., INTER_LINEAR)`."""
    h, w = image.shape[:2]
    mx, my = map_x.astype(np.float32), map_y.astype(np.float32)
    if mx.min() < 0 or my.min() < 0 or mx.max() > w - 1 or my.max() > h - 1:
        raise ValueError("remap_linear needs maps inside the image")
    x0, y0 = np.floor(mx).astype(np.int64), np.floor(my).astype(np.int64)
    tx, ty = (mx - x0)[..., None], (my - y0)[..., None]
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)  # a clamped neighbour only ever has weight 0
    src = image.astype(np.float32)
    top = src[y0, x0] + tx * (src[y0, x1] - src[y0, x0])
    bottom = src[y1, x0] + tx * (src[y1, x1] - src[y1, x0])
    return np.rint(top + ty * (bottom - top)).clip(0, 255).astype(np.uint8)


def draw_polyline(mask: np.ndarray, points: np.ndarray, thickness: int, value: int = 1) -> None:
    """Draw an open polyline of round-capped segments about `thickness` pixels wide into `mask` (H, W) in place:
    every pixel whose centre lies within a radius of a segment. OpenCV fills each segment as a fixed-point polygon
    plus round caps, which comes out wider than `thickness`; the radius (thickness/2 + 0.45 for even thickness,
    + 0.9 for odd, 0.5 for 1) is fitted to it (tests/test_preprocess_opencv.py measures the overlap)."""
    h, w = mask.shape
    radius = 0.5 if thickness <= 1 else thickness / 2 + (0.9 if thickness & 1 else 0.45)
    pts = np.asarray(points, np.float64)
    for (ax, ay), (bx, by) in itertools.pairwise(pts):
        x_lo, x_hi = max(0, int(np.floor(min(ax, bx) - radius))), min(w - 1, int(np.ceil(max(ax, bx) + radius)))
        y_lo, y_hi = max(0, int(np.floor(min(ay, by) - radius))), min(h - 1, int(np.ceil(max(ay, by) + radius)))
        if x_lo > x_hi or y_lo > y_hi:
            continue
        yy, xx = np.mgrid[y_lo : y_hi + 1, x_lo : x_hi + 1].astype(np.float64)
        dx, dy = bx - ax, by - ay
        length2 = dx * dx + dy * dy
        t = np.zeros_like(xx) if length2 == 0 else np.clip(((xx - ax) * dx + (yy - ay) * dy) / length2, 0.0, 1.0)
        inside = (xx - ax - t * dx) ** 2 + (yy - ay - t * dy) ** 2 <= radius * radius
        mask[y_lo : y_hi + 1, x_lo : x_hi + 1][inside] = value
