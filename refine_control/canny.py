"""Canny edges in numpy alone, the same integer steps as OpenCV's `cv2.Canny` (aperture 3), so that the device
install needs no OpenCV and training and the device draw the same edge maps.

The steps follow OpenCV's implementation: no smoothing first (cv2.Canny does none), 3×3 Sobel with replicated
borders in integers, per pixel the channel with the largest magnitude (the first one on a tie), magnitude
|dx| + |dy| (or dx² + dy² with `l2_gradient`, thresholds then squared), non-maximum suppression along four
directions with OpenCV's fixed-point tan(22.5°) test and its tie rules (magnitude outside the image is 0), then
hysteresis: pixels above `low` that survive suppression, 8-connected to one above `high`. Thresholds are strict
(`>`), as in OpenCV. tests/test_canny.py checks the result against `cv2.Canny` pixel for pixel on real images.
"""

import math

import numpy as np

_SHIFT = 15
_TG22 = int(0.4142135623730950488016887242097 * (1 << _SHIFT) + 0.5)  # tan(22.5°) in Q15, as OpenCV rounds it


def sobel3(channel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """3×3 Sobel derivatives (dx, dy) of an (H, W) image as int32, borders replicated."""
    p = np.pad(channel.astype(np.int32), 1, mode="edge")
    diff = p[:, 2:] - p[:, :-2]
    dx = diff[:-2] + 2 * diff[1:-1] + diff[2:]
    smooth = p[:, :-2] + 2 * p[:, 1:-1] + p[:, 2:]
    dy = smooth[2:] - smooth[:-2]
    return dx, dy


def _gradients(image: np.ndarray, l2_gradient: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dx, dy, magnitude) int64 (H, W); for several channels the one with the largest magnitude per pixel."""
    channels = image[..., None] if image.ndim == 2 else image
    dxs, dys = zip(*(sobel3(channels[..., c]) for c in range(channels.shape[2])), strict=True)
    dx, dy = np.stack(dxs, axis=-1).astype(np.int64), np.stack(dys, axis=-1).astype(np.int64)
    mag = dx * dx + dy * dy if l2_gradient else np.abs(dx) + np.abs(dy)
    if mag.shape[2] == 1:
        return dx[..., 0], dy[..., 0], mag[..., 0]
    pick = np.argmax(mag, axis=2)[..., None]  # first maximum, as OpenCV's strict `>` scan
    return (np.take_along_axis(a, pick, axis=2)[..., 0] for a in (dx, dy, mag))  # type: ignore[return-value]


def _suppressed(dx: np.ndarray, dy: np.ndarray, mag: np.ndarray, low: int) -> np.ndarray:
    """Pixels above `low` that are a local maximum across the edge (OpenCV's rules, ties included)."""
    h, w = mag.shape
    m = np.pad(mag, 1)  # magnitude outside the image is 0
    centre = m[1:-1, 1:-1]

    def at(dy_: int, dx_: int) -> np.ndarray:
        return m[1 + dy_ : 1 + dy_ + h, 1 + dx_ : 1 + dx_ + w]

    ax = np.abs(dx)
    ay = np.abs(dy) << _SHIFT
    tg22x = ax * _TG22
    tg67x = tg22x + (ax << (_SHIFT + 1))
    horizontal = ay < tg22x
    vertical = ~horizontal & (ay > tg67x)
    diagonal = ~horizontal & ~vertical
    same_sign = (dx ^ dy) >= 0  # s = +1: compare (y-1, x-1) and (y+1, x+1); else (y-1, x+1) and (y+1, x-1)
    keep = np.zeros((h, w), bool)
    keep |= horizontal & (centre > at(0, -1)) & (centre >= at(0, 1))
    keep |= vertical & (centre > at(-1, 0)) & (centre >= at(1, 0))
    keep |= diagonal & same_sign & (centre > at(-1, -1)) & (centre > at(1, 1))
    keep |= diagonal & ~same_sign & (centre > at(-1, 1)) & (centre > at(1, -1))
    return keep & (mag > low)


def hysteresis(candidates: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """The `candidates` (H, W) bool pixels 8-connected through candidates to a `seeds` pixel (breadth first)."""
    h, w = candidates.shape
    width = w + 2
    allowed = np.pad(candidates, 1).ravel()  # the frame is never allowed: no wrap-around between rows
    reached = np.zeros_like(allowed)
    frontier = np.flatnonzero(np.pad(seeds & candidates, 1).ravel())
    reached[frontier] = True
    steps = np.array([-width - 1, -width, -width + 1, -1, 1, width - 1, width, width + 1])
    while frontier.size:
        near = (frontier[:, None] + steps).ravel()
        near = near[allowed[near] & ~reached[near]]
        frontier = np.unique(near)
        reached[frontier] = True
    return reached.reshape(h + 2, width)[1:-1, 1:-1]


def canny(image: np.ndarray, low: float, high: float, l2_gradient: bool = False) -> np.ndarray:
    """Edges (H, W) uint8 in {0, 255} of a uint8 image (H, W) or (H, W, C), as `cv2.Canny(image, low, high)`."""
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"canny needs a uint8 image (H, W) or (H, W, C), got {image.dtype} {image.shape}")
    low, high = sorted((float(low), float(high)))
    if l2_gradient:
        low, high = (min(32767.0, t) ** 2 if t > 0 else t for t in (low, high))
    low_i, high_i = math.floor(low), math.floor(high)
    dx, dy, mag = _gradients(image, l2_gradient)
    candidates = _suppressed(dx, dy, mag, low_i)
    edges = hysteresis(candidates, mag > high_i)
    return edges.astype(np.uint8) * 255
