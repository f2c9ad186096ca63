"""Control-image preprocessors behind one interface, in numpy alone (the device install carries no OpenCV), so that
training, the server and the torch-free runtime draw the same control maps from one implementation.

Each preprocessor maps an RGB image (H, W, 3) uint8 to a control image (H, W, 3) float32. Edge-like
maps are in [0, 1]; the inpainting condition follows the public SD1.5 inpainting ControlNet convention
(RGB in [0, 1], hole pixels set to -1). Random ones (shuffle, inpaint) draw from the `rng` they are given,
so the trainer can make them deterministic per step.
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from refine_control import imageops
from refine_control.canny import canny as canny_edges
from refine_control.errors import ConfigError
from refine_control.registry import Registry

PreprocessFn = Callable[[np.ndarray, np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class Preprocessor:
    name: str
    description: str
    fn: PreprocessFn
    value_range: tuple[float, float] = (0.0, 1.0)

    def __call__(self, image: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ConfigError(f"a preprocessor needs an RGB uint8 image (H, W, 3), got {image.dtype} {image.shape}")
        out = self.fn(image, rng if rng is not None else np.random.default_rng(0))
        return np.ascontiguousarray(out, dtype=np.float32)


PREPROCESSORS: Registry[Preprocessor] = Registry("preprocessor")


def _gray3(edges: np.ndarray) -> np.ndarray:
    return np.repeat((edges.astype(np.float32) / 255.0)[..., None], 3, axis=2)


def canny(image: np.ndarray, rng: np.random.Generator, low: int = 100, high: int = 200) -> np.ndarray:
    """Canny on the RGB image (the ControlNet canny convention: `cv2.Canny(image, 100, 200)`, which
    refine_control.canny reproduces pixel for pixel without OpenCV)."""
    return _gray3(canny_edges(image, low, high))


def lineart(image: np.ndarray, rng: np.random.Generator, sigma: float = 6.0, strength: float = 8.0) -> np.ndarray:
    """Dark strokes brighter than a blurred copy of the image: a model-free line-art map."""
    x = image.astype(np.float32)
    blurred = imageops.gaussian_blur(x, sigma)
    intensity = np.min(blurred - x, axis=2).clip(0, 255)
    strong = intensity[intensity > 8]
    scale = max(16.0, float(np.median(strong))) if strong.size else 16.0
    return np.repeat((intensity / scale * strength).clip(0, 255)[..., None] / 255.0, 3, axis=2)


def shuffle(image: np.ndarray, rng: np.random.Generator, cells: int = 8) -> np.ndarray:
    """Content shuffle: warp the image by a random smooth flow field (colours and textures, no layout)."""
    h, w = image.shape[:2]
    coarse = rng.uniform(0, 1, size=(2, cells, cells)).astype(np.float32)
    flow_x = imageops.resize_cubic(coarse[0], w, h) * (w - 1)
    flow_y = imageops.resize_cubic(coarse[1], w, h) * (h - 1)
    warped = imageops.remap_linear(image, flow_x.clip(0, w - 1), flow_y.clip(0, h - 1))
    return warped.astype(np.float32) / 255.0


def random_mask(h: int, w: int, rng: np.random.Generator, min_area: float = 0.1, max_area: float = 0.5) -> np.ndarray:
    """A hole mask (1 = fill) mixing rectangles and brush strokes, covering `min_area`..`max_area` of the image."""
    mask = np.zeros((h, w), np.uint8)
    target = rng.uniform(min_area, max_area)
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
            imageops.draw_polyline(mask, points, thickness)
    return mask


def inpaint(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Masked image for the inpainting ControlNet: RGB in [0, 1], hole pixels (random mask) set to -1."""
    mask = random_mask(*image.shape[:2], rng)
    control = image.astype(np.float32) / 255.0
    control[mask > 0] = -1.0
    return control


PREPROCESSORS.register("canny", Preprocessor("canny", "Canny edges, as OpenCV's (default)", canny))
PREPROCESSORS.register("lineart", Preprocessor("lineart", "model-free line art (blur difference)", lineart))
PREPROCESSORS.register("shuffle", Preprocessor("shuffle", "content shuffle by a random flow field", shuffle))
PREPROCESSORS.register(
    "inpaint", Preprocessor("inpaint", "masked image, hole = -1 (random masks)", inpaint, value_range=(-1.0, 1.0))
)

# controlnet-aux detectors that need model weights; used only when the package imports and the user has
# the weights locally (`--preprocessor aux:hed` etc.). controlnet-aux needs torchvision, which this
# project's pinned CPU torch cannot load, so it is an optional extra.
AUX_DETECTORS = {
    "hed": "HEDdetector",
    "midas": "MidasDetector",
    "openpose": "OpenposeDetector",
    "pidi": "PidiNetDetector",
}


def _aux_preprocessor(name: str) -> Preprocessor:
    detector_name = name.split(":", 1)[1]
    if detector_name not in AUX_DETECTORS:
        raise ConfigError(
            f"unknown controlnet-aux detector {detector_name!r}; choose one of: {', '.join(AUX_DETECTORS)}"
        )
    try:
        import controlnet_aux
    except Exception as err:  # ImportError, or RuntimeError when torchvision is broken
        raise ConfigError(
            f"preprocessor {name!r} needs controlnet-aux, which does not import here ({type(err).__name__})",
            hint="pip install 'refine-control[annotators]' in an environment where torchvision works",
        ) from err
    detector_cls = getattr(controlnet_aux, AUX_DETECTORS[detector_name])
    detector = None

    def run(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        nonlocal detector
        if detector is None:
            detector = detector_cls.from_pretrained("lllyasviel/Annotators")  # local cache only (HF_HUB_OFFLINE)
        out = detector(image, output_type="np")
        import cv2  # controlnet-aux depends on OpenCV itself

        return cv2.resize(np.asarray(out), image.shape[1::-1]).astype(np.float32) / 255.0

    return Preprocessor(name, f"controlnet-aux {AUX_DETECTORS[detector_name]}", run)


def get_preprocessor(name: str) -> Preprocessor:
    """Look up a preprocessor by name: a built-in one, or `aux:<detector>` for controlnet-aux."""
    if name.startswith("aux:"):
        return _aux_preprocessor(name)
    return PREPROCESSORS.get(name)
