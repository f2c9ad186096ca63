"""Image-level quality metrics on numpy images, each with an exact meaning on hand-made cases.

Images are RGB uint8 (H, W, 3) or batches (N, H, W, 3); masks and edge maps are bool (H, W).
Edge maps come from the same Canny preprocessor as the controls, so "the generated image's edges" and the control
are measured alike.

Two edge scores: the lenient one (`edge_prf`, a 1-pixel match radius) forgives a blurred or shifted outline; the
strict ones follow ControlNet++ (arXiv 2404.07987): pixel-exact precision/recall/F1 between the Canny map of the
generated image and the control (`edge_prf_strict`), plus a chamfer distance (`edge_chamfer`) that grows with every
missing, extra or displaced edge pixel.

What is known and what is chosen for the strict score:
- Known (ControlNet++'s `eval/eval.py` and `eval/eval_edge.py`): the control and the generated image's edge map are
  made by one and the same Canny; the score is torchmetrics' `BinaryF1Score` over every pixel, no tolerance. Their
  default task runs kornia's Canny with thresholds 0.1/0.2 on images scaled to [0, 1]; a `canny_cv2` task runs
  OpenCV's `cv2.Canny(image, 100, 200)` on 0-255 images instead.
- Chosen here: OpenCV Canny 100/200 on the 0-255 RGB image (the `canny_cv2` variant; it is also the project's control
  preprocessor), so that a generated image's edges are extracted exactly as its control was and the ground truth
  scores 1. kornia's 0.1/0.2 thresholds are not the same edges (a Gaussian blur first and a normalised Sobel), so
  the absolute numbers are not comparable with the paper's table, only the protocol is.
- Chosen here: F1 per image, then the mean over images (ControlNet++ pools the pixels of the 4 samples of one
  condition); two empty maps score 1 (torchmetrics would score 0), as in `edge_prf`.
"""

import math

import numpy as np
import torch
from scipy import ndimage
from skimage.color import rgb2lab
from skimage.metrics import structural_similarity
from torchmetrics.functional.image import peak_signal_noise_ratio

from refine_control.preprocess import get_preprocessor


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) or (H, W, 3) uint8 → (N, 3, H, W) float64 in [0, 1]."""
    array = images[None] if images.ndim == 3 else images
    return torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2).double() / 255.0


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image PSNR in dB (peak 255); `inf` for identical images. Returns (N,)."""
    ta, tb = _to_tensor(a), _to_tensor(b)
    out = [float(peak_signal_noise_ratio(x[None], y[None], data_range=1.0)) for x, y in zip(ta, tb, strict=True)]
    return np.asarray(out)


def ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image SSIM (Gaussian window σ 1.5, as in Wang et al. 2004; colour channels averaged); exactly 1 for
    identical images. Returns (N,)."""
    a, b = (x[None] if x.ndim == 3 else x for x in (a, b))
    window = min(11, 2 * ((min(a.shape[1:3]) - 1) // 2) + 1)  # 11 taps (σ 1.5); fewer only for tiny images
    kw = {"data_range": 255, "channel_axis": -1, "gaussian_weights": True, "sigma": 1.5, "win_size": window}
    kw["use_sample_covariance"] = False
    return np.asarray([structural_similarity(x, y, **kw) for x, y in zip(a, b, strict=True)], dtype=np.float64)


def edges(image: np.ndarray) -> np.ndarray:
    """Canny edges (H, W) bool of an RGB uint8 image, with the controls' preprocessor."""
    return get_preprocessor("canny")(image)[..., 0] > 0.5


def edge_prf(predicted: np.ndarray, reference: np.ndarray, tolerance: int = 1) -> tuple[float, float, float]:
    """Edge precision, recall and F1 with a `tolerance`-pixel match radius (Chebyshev distance).

    A predicted edge pixel is correct if a reference edge lies within the radius, and vice versa for recall.
    Conventions: no predicted edges gives precision 0 (a blank image scores F1 = 0); two empty maps score 1.
    """
    predicted, reference = predicted.astype(bool), reference.astype(bool)
    if not predicted.any() and not reference.any():
        return 1.0, 1.0, 1.0
    footprint = np.ones((2 * tolerance + 1,) * 2, bool)
    near_reference = ndimage.binary_dilation(reference, footprint)
    near_predicted = ndimage.binary_dilation(predicted, footprint)
    precision = float((predicted & near_reference).sum() / predicted.sum()) if predicted.any() else 0.0
    recall = float((reference & near_predicted).sum() / reference.sum()) if reference.any() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return precision, recall, f1


def edge_prf_strict(predicted: np.ndarray, reference: np.ndarray) -> tuple[float, float, float]:
    """Pixel-exact edge precision, recall and F1 (the ControlNet++ Canny protocol): `edge_prf` with no tolerance."""
    return edge_prf(predicted, reference, tolerance=0)


def edge_chamfer(predicted: np.ndarray, reference: np.ndarray) -> float:
    """Symmetric chamfer distance in pixels between two edge maps: the mean Euclidean distance from each predicted
    edge pixel to the nearest reference edge pixel and from each reference edge pixel to the nearest predicted one,
    averaged over both directions. Missing structure raises the second term, stray or displaced edges the first.

    Conventions: two empty maps score 0; one empty map against a non-empty one scores the image diagonal (the
    largest distance there is: all the structure is missing, or all of it is stray)."""
    predicted, reference = predicted.astype(bool), reference.astype(bool)
    if not predicted.any() and not reference.any():
        return 0.0
    if not predicted.any() or not reference.any():
        return float(math.hypot(*predicted.shape))
    to_reference = ndimage.distance_transform_edt(~reference)
    to_predicted = ndimage.distance_transform_edt(~predicted)
    return float(0.5 * (to_reference[predicted].mean() + to_predicted[reference].mean()))


EDGE_SCORES = (
    "edge_precision", "edge_recall", "edge_f1",
    "edge_precision_strict", "edge_recall_strict", "edge_f1_strict", "edge_chamfer_px",
)  # fmt: skip


def edge_scores(images: np.ndarray, controls: np.ndarray, strict: bool = True) -> dict[str, np.ndarray]:
    """Per-image edge scores (each (N,)) of RGB uint8 images (N, H, W, 3) against bool control maps (N, H, W): the
    1-pixel `edge_prf` and, with `strict`, the pixel-exact `edge_prf_strict` and `edge_chamfer`."""
    pairs = list(zip([edges(image) for image in images], controls, strict=True))
    lenient = np.array([edge_prf(m, c) for m, c in pairs], dtype=np.float64).reshape(-1, 3)
    out = {name: lenient[:, i] for i, name in enumerate(EDGE_SCORES[:3])}
    if strict:
        exact = np.array([edge_prf_strict(m, c) for m, c in pairs], dtype=np.float64).reshape(-1, 3)
        out |= {name: exact[:, i] for i, name in enumerate(EDGE_SCORES[3:6])}
        out["edge_chamfer_px"] = np.array([edge_chamfer(m, c) for m, c in pairs], dtype=np.float64)
    return out


def foreground_mask(image: np.ndarray, background: tuple[int, int, int], threshold: float = 48.0) -> np.ndarray:
    """Pixels farther than `threshold` (RGB Euclidean, 0–255) from the known background colour: (H, W) bool."""
    distance = np.linalg.norm(image.astype(np.float32) - np.asarray(background, np.float32), axis=-1)
    return distance > threshold


def mask_iou(predicted: np.ndarray, reference: np.ndarray) -> float:
    """Intersection over union of two bool masks; 1 when both are empty."""
    union = np.logical_or(predicted, reference).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(predicted, reference).sum() / union)


def mean_lab(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean CIELAB colour (3,) of the pixels in `mask` (the sRGB image's mean is taken in Lab)."""
    if not mask.any():
        raise ValueError("mean_lab needs a non-empty mask")
    return rgb2lab(image[mask][None].astype(np.float64) / 255.0)[0].mean(axis=0)


def colour_error(image: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> float:
    """ΔE*ab (CIE76) between the mean Lab colours of `image` and `reference` inside the true `mask`."""
    return float(np.linalg.norm(mean_lab(image, mask) - mean_lab(reference, mask)))


def finite_mean(values: np.ndarray) -> float:
    """Mean, or `inf` if any value is infinite (e.g. PSNR of identical images)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return math.nan
    return float("inf") if np.isinf(values).any() else float(values.mean())
