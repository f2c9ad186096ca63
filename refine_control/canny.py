"""Canny edges in numpy alone, the same integer steps as OpenCV's `cv2.Canny` (aperture 3), so that the device
install needs no OpenCV and training and the device draw the same edge maps.

The steps follow OpenCV's implementation: no smoothing first (cv2.Canny does none), 3×3 Sobel with replicated
borders in integers, per pixel the channel with the largest magnitude (the first one on a tie), magnitude
|dx| + |dy| (or dx² + dy² with `l2_gradient`, thresholds then squared), non-maximum suppression along four
directions with OpenCV's fixed-point tan(22.5°) test and its tie rules (magnitude outside the image is 0), then
hysteresis: pixels above `low` that survive suppression, 8-connected to one above `high` (OpenCV follows them
with a stack; here the connected components of row runs give the same set). Thresholds are strict (`>`), as in
OpenCV. tests/test_preprocess_opencv.py checks the result against `cv2.Canny` pixel for pixel on real images.
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
    """(dx, dy, magnitude) int32 (H, W); for several channels the one with the largest magnitude per pixel."""
    channels = image[..., None] if image.ndim == 2 else image
    best: list[np.ndarray] = []
    for c in range(channels.shape[2]):
        dx, dy = sobel3(channels[..., c])
        mag = dx * dx + dy * dy if l2_gradient else np.abs(dx) + np.abs(dy)  # at most 2 * 1020², fits int32
        if not best:
            best = [dx, dy, mag]
            continue
        larger = mag > best[2]  # strictly: the first channel wins a tie, as in OpenCV
        for kept, new in zip(best, (dx, dy, mag), strict=True):
            np.copyto(kept, new, where=larger)
    return best[0], best[1], best[2]


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


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The horizontal runs of True in `mask` (H, W), row by row: (row, first column, column after the last)."""
    h, w = mask.shape
    padded = np.zeros((h, w + 2), np.int8)
    padded[:, 1:-1] = mask
    step = np.diff(padded, axis=1)
    rows, starts = np.nonzero(step == 1)
    _, ends = np.nonzero(step == -1)
    return rows, starts, ends


def _components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected components of a graph with `n` nodes and edges (a, b): each node's smallest node index in its
    component. Each round hooks both ends of every edge, and the labels they point to, onto the smaller label, then
    follows label chains to their end; a few rounds suffice even for long chains."""
    labels = np.arange(n)
    while True:
        label_a, label_b = labels[a], labels[b]
        low = np.minimum(label_a, label_b)
        for nodes in (label_a, label_b, a, b):  # a label is always a node of the same component, at most its own
            np.minimum.at(labels, nodes, low)
        while True:
            jumped = labels[labels]
            if np.array_equal(jumped, labels):
                break
            labels = jumped
        if np.array_equal(labels[a], labels[b]):
            return labels


def hysteresis(candidates: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """The `candidates` (H, W) bool pixels 8-connected through candidates to a `seeds` pixel.

    Works on runs of candidates within rows (connected components of the runs that touch from one row to the next,
    in whole-array steps), so its cost does not grow with the length of an edge chain as a pixel walk's does."""
    h, w = candidates.shape
    rows, starts, ends = _runs(candidates)
    if rows.size == 0:
        return np.zeros((h, w), bool)
    stride = w + 2  # a key row * stride + column orders runs row by row, columns never reaching the next row
    flat_seeds = np.concatenate([[0], np.cumsum((seeds & candidates).ravel(), dtype=np.int64)])
    seeded = flat_seeds[rows * w + ends] > flat_seeds[rows * w + starts]
    # Runs of row r + 1 touching run a of row r (8-connected): start <= a.end (exclusive) and end >= a.start.
    start_keys, end_keys = rows * stride + starts, rows * stride + ends
    first = np.searchsorted(end_keys, (rows + 1) * stride + starts, side="left")
    last = np.searchsorted(start_keys, (rows + 1) * stride + ends, side="right")
    count = np.maximum(last - first, 0)
    run_a = np.repeat(np.arange(rows.size), count)
    run_b = np.repeat(first, count) + (np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count))
    roots = _components(rows.size, run_a, run_b)
    seeded_roots = np.zeros(rows.size, bool)
    seeded_roots[roots[seeded]] = True
    keep = seeded_roots[roots]
    paint = np.zeros(h * w + 1, np.int64)
    np.add.at(paint, rows[keep] * w + starts[keep], 1)
    np.add.at(paint, rows[keep] * w + ends[keep], -1)
    return (np.cumsum(paint)[:-1] > 0).reshape(h, w)


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
