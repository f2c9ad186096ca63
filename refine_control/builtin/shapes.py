"""The procedural "shapes" dataset: one textured shape on a plain background, with an exact ground truth.

Every sample is a `ShapeSpec` (shape × colour × texture × size × position). The caption names the colour, the
texture and the shape ("a red striped circle"); the control is the Canny edge map of the render, computed by the
same preprocessor as for real data. Textures are drawn at a low contrast (±`TEXTURE_CONTRAST` per channel) that
Canny (thresholds 100/200) never turns into edges, so the control carries the outline only and colour and texture
must come from the caption.

Splits are fixed by a hash of the spec, independent of the seed: a spec belongs to exactly one of `train`,
`unlabelled`, `val` and `test`, so no seed can leak a test sample into training. `val` is for choosing recipes
(learning rates, presets) so that `test` is only ever used to report them. Within a split the seed picks which
specs are drawn, without repeats.
"""

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from refine_control.atomic import atomic_dir, write_text
from refine_control.errors import ConfigError
from refine_control.preprocess import get_preprocessor

logger = logging.getLogger(__name__)

RESOLUTION = 64
BACKGROUND = (236, 236, 236)
SHAPES = ("circle", "square", "triangle", "diamond", "cross", "star")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 40, 40),
    "yellow": (228, 196, 32),
    "green": (44, 160, 64),
    "cyan": (32, 176, 196),
    "blue": (40, 72, 208),
    "purple": (136, 56, 180),
}
TEXTURES = ("solid", "striped", "checkered", "dotted")
# Caption word per texture; solid shapes are just "a red circle".
TEXTURE_WORDS = {"solid": "", "striped": "striped", "checkered": "checkered", "dotted": "dotted"}
# Textures are made of 4×4 cells on an 8-pixel grid, so every cell falls on one latent pixel of the builtin
# teacher's VAE (scale factor 4): finer dots do not survive its compression.
TEXTURE_PERIOD = 8
TEXTURE_CONTRAST = 22  # per channel; a step of 22 gives a Sobel magnitude below Canny's low threshold of 100
SIZES = range(10, 23)  # the shape's radius in pixels
MARGIN = 3

SPLITS = ("train", "unlabelled", "val", "test")
# Share of all specs per split, in percent of the hash range.
_SPLIT_RANGES = {"train": (0, 60), "unlabelled": (60, 85), "val": (85, 90), "test": (90, 100)}
_SPLIT_STREAMS = {"train": 1, "unlabelled": 2, "test": 3, "val": 4}


@dataclass(frozen=True)
class ShapeSpec:
    """The generative factors of one sample; `size` is the radius in pixels, (cx, cy) the centre."""

    shape: str
    colour: str
    texture: str
    size: int
    cx: int
    cy: int

    @property
    def caption(self) -> str:
        words = ["a", self.colour, TEXTURE_WORDS[self.texture], self.shape]
        return " ".join(w for w in words if w)

    def key(self) -> str:
        return f"{self.shape}|{self.colour}|{self.texture}|{self.size}|{self.cx}|{self.cy}"


@dataclass(frozen=True)
class ShapeSample:
    """A rendered spec. image: (64, 64, 3) uint8; control: (64, 64, 3) float32 in [0, 1]; mask: (64, 64) bool."""

    spec: ShapeSpec
    image: np.ndarray
    control: np.ndarray
    mask: np.ndarray

    @property
    def caption(self) -> str:
        return self.spec.caption


def split_of(spec: ShapeSpec) -> str:
    """The split a spec belongs to, from a hash of its factors (the same for every seed)."""
    bucket = int.from_bytes(hashlib.blake2b(spec.key().encode(), digest_size=8).digest(), "big") % 100
    return next(name for name, (lo, hi) in _SPLIT_RANGES.items() if lo <= bucket < hi)


def _polygon(points: np.ndarray) -> np.ndarray:
    mask = np.zeros((RESOLUTION, RESOLUTION), np.uint8)
    # 4 fractional bits: vertices at 1/16 px, so shapes are symmetric and deterministic.
    cv2.fillPoly(mask, [np.round(points * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    return mask.astype(bool)


def shape_mask(shape: str, size: int, cx: int, cy: int) -> np.ndarray:
    """The foreground mask (64, 64) bool of a shape of radius `size` centred at (cx, cy)."""
    y, x = np.mgrid[0:RESOLUTION, 0:RESOLUTION].astype(np.float32)
    dx, dy = x - cx, y - cy
    r = float(size)
    if shape == "circle":
        return dx**2 + dy**2 < r**2  # strict: no one-pixel nubs at the four extremes
    if shape == "square":
        return (np.abs(dx) <= 0.8 * r) & (np.abs(dy) <= 0.8 * r)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= r
    if shape == "cross":
        arm = r / 3
        return ((np.abs(dx) <= r) & (np.abs(dy) <= arm)) | ((np.abs(dx) <= arm) & (np.abs(dy) <= r))
    if shape in ("triangle", "star"):
        corners = 3 if shape == "triangle" else 5
        angles = -np.pi / 2 + np.arange(2 * corners) * np.pi / corners
        radii = np.where(np.arange(2 * corners) % 2 == 0, r, r * (0.5 if corners == 3 else 0.45))
        points = np.stack(
            [cx + radii * np.cos(angles), cy + radii * np.sin(angles) + (r / 4 if corners == 3 else 0)], 1
        )
        return _polygon(points)
    raise ConfigError(f"unknown shape {shape!r}; choose one of: {', '.join(SHAPES)}")


def texture_mask(texture: str, cx: int = 0, cy: int = 0) -> np.ndarray:
    """Where the texture's second shade goes (64, 64) bool: 4×4 cells on an 8-pixel grid anchored at the shape.

    The grid origin is (cx, cy) rounded down to a multiple of 4, so cells stay on the 4-pixel grid while the
    pattern's phase follows the shape: a translation-equivariant denoiser cannot know a pixel's absolute position
    in the middle of an image, but it can place a texture relative to the outline it is given.
    """
    half = TEXTURE_PERIOD // 2
    y, x = np.mgrid[0:RESOLUTION, 0:RESOLUTION]
    x, y = x - cx // half * half, y - cy // half * half
    if texture == "solid":
        return np.zeros((RESOLUTION, RESOLUTION), bool)
    if texture == "striped":
        return (y // half) % 2 == 1
    if texture == "checkered":
        return (x // half + y // half) % 2 == 1
    if texture == "dotted":
        return ((x // half) % 2 == 1) & ((y // half) % 2 == 1)
    raise ConfigError(f"unknown texture {texture!r}; choose one of: {', '.join(TEXTURES)}")


def texture_shade(colour: str) -> tuple[int, int, int]:
    """The texture's second shade: the colour made lighter (dark colours) or darker (light ones)."""
    rgb = np.asarray(COLOURS[colour])
    sign = 1 if rgb.mean() < 128 else -1
    return tuple(int(v) for v in np.clip(rgb + sign * TEXTURE_CONTRAST, 0, 255))


def render(spec: ShapeSpec) -> tuple[np.ndarray, np.ndarray]:
    """The ground-truth render (64, 64, 3) uint8 and its foreground mask (64, 64) bool."""
    mask = shape_mask(spec.shape, spec.size, spec.cx, spec.cy)
    image = np.empty((RESOLUTION, RESOLUTION, 3), np.uint8)
    image[:] = BACKGROUND
    image[mask] = COLOURS[spec.colour]
    image[mask & texture_mask(spec.texture, spec.cx, spec.cy)] = texture_shade(spec.colour)
    return image, mask


def make_sample(spec: ShapeSpec) -> ShapeSample:
    image, mask = render(spec)
    return ShapeSample(spec, image, get_preprocessor("canny")(image), mask)


def _draw(rng: np.random.Generator) -> ShapeSpec:
    size = int(rng.integers(SIZES.start, SIZES.stop))
    lo, hi = size + MARGIN, RESOLUTION - 1 - size - MARGIN
    return ShapeSpec(
        shape=SHAPES[rng.integers(len(SHAPES))],
        colour=list(COLOURS)[rng.integers(len(COLOURS))],
        texture=TEXTURES[rng.integers(len(TEXTURES))],
        size=size,
        cx=int(rng.integers(lo, hi + 1)),
        cy=int(rng.integers(lo, hi + 1)),
    )


def iter_specs(split: str, seed: int) -> Iterator[ShapeSpec]:
    """An endless, deterministic stream of distinct specs of one split."""
    if split not in SPLITS:
        raise ConfigError(f"unknown shapes split {split!r}; choose one of: {', '.join(SPLITS)}")
    rng = np.random.default_rng([seed, _SPLIT_STREAMS[split]])
    seen: set[ShapeSpec] = set()
    while True:
        spec = _draw(rng)
        if spec not in seen and split_of(spec) == split:
            seen.add(spec)
            yield spec


def sample_specs(split: str, n: int, seed: int) -> list[ShapeSpec]:
    """The first `n` specs of the split's stream for `seed`."""
    if n < 0:
        raise ConfigError(f"number of shapes must be >= 0, got {n}")
    stream = iter_specs(split, seed)
    return [next(stream) for _ in range(n)]


def generate(split: str, n: int, seed: int) -> list[ShapeSample]:
    """`n` rendered samples (image, control, mask, factors) of a split."""
    return [make_sample(spec) for spec in sample_specs(split, n, seed)]


def write_image_folder(out_dir: str | Path, split: str, n: int, seed: int, captions: bool = True) -> Path:
    """Write `n` samples of `split` as a Hugging Face image folder (PNGs + `metadata.jsonl`), atomically.

    With `captions=False` the metadata has no `text` (unlabelled data).
    """
    out_dir = Path(out_dir)
    specs = sample_specs(split, n, seed)
    rows = []
    with atomic_dir(out_dir) as tmp:
        for i, spec in enumerate(specs):
            name = f"{split}_{i:06d}.png"
            Image.fromarray(render(spec)[0]).save(tmp / name)
            rows.append({"file_name": name, "text": spec.caption} if captions else {"file_name": name})
        write_text(tmp / "metadata.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    logger.info("wrote %d %s shapes to %s", n, split, out_dir)
    return out_dir
