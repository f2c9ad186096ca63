"""Fashion-MNIST as a captioned image folder: the worked example of distilling and evaluating on real data.

    python -m refine_control.data.fashion_mnist --output-dir data/fashion-train --split train --num-images 2000
    python -m refine_control.data.fashion_mnist --output-dir data/fashion-test --split test --num-images 256

Reads the idx files of the Debian package `dataset-fashion-mnist` (never downloads); `read_fashion_mnist` is also
the reader of the `fashion-mnist` dataset of `refine_control.weaklabel`. Each image becomes an RGB
PNG at `--size` pixels with the caption "a photo of a <class>"; `--unlabelled` leaves the captions out (stage-2
data). `train` draws from the official training set and `test` from the official test set, so they never overlap.
Within a split, `--seed` fixes one shuffled order and `--skip K` starts K images into it, so folders written with the
same seed and non-overlapping ranges share no image (e.g. labelled = the first 50, unlabelled = 1,000 after skip 200).
"""

import argparse
import gzip
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from refine_control.atomic import atomic_dir, write_text
from refine_control.cli_utils import run_cli
from refine_control.errors import ConfigError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_ENV = "REFINE_FASHION_MNIST_DIR"
FASHION_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")
OFFICIAL_TRAIN = 60_000  # the pooled arrays hold the official train set first, then the 10,000 test images


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    if data[:3] != b"\x00\x00\x08" or len(data) != 4 + 4 * ndim + int(np.prod(dims)):
        raise ConfigError(f"{path} is not a uint8 idx file of the expected size")
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def read_fashion_mnist(root: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST (train + t10k pooled, 70,000 images in [0, 1]) from the Debian package or `root`."""
    root = Path(root or os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DIR)
    names = [f"{p}-{k}-ubyte.gz" for p in ("train", "t10k") for k in ("images-idx3", "labels-idx1")]
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise ConfigError(
            f"Fashion-MNIST not found in {root} (missing {', '.join(missing)})",
            hint=f"sudo apt-get install dataset-fashion-mnist   (or set {FASHION_MNIST_ENV} to a folder with the idx files)",
        )
    xs, ys = [], []
    for part in ("train", "t10k"):
        xs.append(_read_idx(root / f"{part}-images-idx3-ubyte.gz"))
        ys.append(_read_idx(root / f"{part}-labels-idx1-ubyte.gz"))
    return (np.concatenate(xs) / 255.0).astype(np.float32), np.concatenate(ys).astype(np.int64)


def write_fashion_folder(
    output_dir: Path,
    split: str,
    num_images: int,
    size: int = 64,
    seed: int = 0,
    captions: bool = True,
    skip: int = 0,
) -> Path:
    """Write images `skip` … `skip + num_images` of the official `split`, shuffled by `seed`, as an image folder,
    atomically."""
    images, labels = read_fashion_mnist(None)
    pool = np.arange(OFFICIAL_TRAIN) if split == "train" else np.arange(OFFICIAL_TRAIN, len(labels))
    if skip + num_images > len(pool):
        raise ConfigError(
            f"`--skip` {skip} + `--num-images` {num_images} exceeds the {len(pool)} images of the {split} split"
        )
    chosen = np.random.default_rng(seed).permutation(pool)[skip : skip + num_images]
    rows = []
    with atomic_dir(output_dir) as tmp:
        for i, idx in enumerate(chosen):
            grey = Image.fromarray((images[idx] * 255).round().astype(np.uint8))
            name = f"{split}_{i:06d}.png"
            grey.resize((size, size), Image.Resampling.BICUBIC).convert("RGB").save(tmp / name)
            row = {"file_name": name}
            if captions:
                row["text"] = f"a photo of a {FASHION_CLASSES[labels[idx]]}"
            rows.append(row)
        write_text(tmp / "metadata.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    return output_dir


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m refine_control.data.fashion_mnist", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--output-dir", type=Path, required=True, help="image folder to write (replaced)")
    parser.add_argument("--split", choices=("train", "test"), default="train", help="Default: %(default)s")
    parser.add_argument("--num-images", type=int, default=2000, help="Default: %(default)s")
    parser.add_argument("--size", type=int, default=64, help="side in pixels. Default: %(default)s")
    parser.add_argument("--seed", type=int, default=0, help="shuffles the split. Default: %(default)s")
    parser.add_argument(
        "--skip", type=int, default=0, help="start this many images into the shuffled split. Default: %(default)s"
    )
    parser.add_argument("--unlabelled", action="store_true", help="write no captions (stage-2 data)")
    args = parser.parse_args(argv)

    def body() -> int:
        if args.num_images < 1 or args.size < 8 or args.skip < 0:
            raise ConfigError("`--num-images` must be >= 1, `--size` >= 8 and `--skip` >= 0")
        path = write_fashion_folder(
            args.output_dir, args.split, args.num_images, args.size, args.seed, not args.unlabelled, args.skip
        )
        print(f"wrote {args.num_images} images to {path}")  # noqa: T201 - the command's output
        return 0

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(main())
