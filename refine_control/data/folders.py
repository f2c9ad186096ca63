"""Image-folder data (the Hugging Face imagefolder convention), image decoding and the seeded data order.

A folder holds images and an optional `metadata.jsonl` with one `{"file_name": ..., "text": ...}` per line.
Records with a `text` are labelled (image + caption); records without one, and images in a folder without
metadata, are unlabelled. With `check` every image is decoded once when the folder is read, so a truncated or
unreadable file is reported by name before training starts (the strict up-front check of small folders; larger
datasets are validated lazily, see `bad_data.py`). `batches.py` draws the training batches from these.
"""

import io
import json
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from refine_control.errors import ConfigError
from refine_control.training.config import DistillConfig

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


@dataclass(frozen=True)
class ImageRecord:
    path: Path
    text: str | None  # None: unlabelled


def _read_metadata(root: Path) -> list[ImageRecord]:
    records = []
    for number, line in enumerate((root / "metadata.jsonl").read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            name = row["file_name"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ConfigError(
                f"{root / 'metadata.jsonl'} line {number} is not a JSON object with a `file_name`: {line[:80]!r}"
            ) from err
        text = row.get("text")
        if text is not None and not isinstance(text, str):
            raise ConfigError(f"{root / 'metadata.jsonl'} line {number}: `text` must be a string, got {text!r}")
        path = (root / name).resolve()
        if root.resolve() not in path.parents:
            raise ConfigError(f"{root / 'metadata.jsonl'} line {number}: {name!r} points outside the folder")
        records.append(ImageRecord(path, text if text and text.strip() else None))
    return records


def _check_image(path: Path) -> None:
    if not path.is_file():
        raise ConfigError(f"image {path} listed in metadata.jsonl does not exist")
    try:
        with Image.open(path) as im:
            im.load()  # a full decode catches truncated files, which `verify()` can miss
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as err:
        raise ConfigError(f"image {path} cannot be read ({err})", hint="remove or replace the file") from err


def read_image_folder(root: str | Path, check: bool = True) -> list[ImageRecord]:
    """List every image of an image folder; with `check`, decode each once now so that a bad file stops the run
    before training (the strict up-front check; otherwise bad files are met, counted and skipped lazily)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ConfigError(f"image folder {root} does not exist or is not a directory")
    if (root / "metadata.jsonl").is_file():
        records = _read_metadata(root)
    else:
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        records = [ImageRecord(p, None) for p in files]
    if not records:
        raise ConfigError(f"image folder {root} holds no images", hint="add images (and a metadata.jsonl)")
    if check:
        check_records(records, root)
    return records


def check_records(records: list[ImageRecord], root: Path) -> None:
    """Decode every image once: the first unreadable one stops the run, by name."""
    for record in tqdm(records, desc=f"checking {root.name}", leave=False, disable=len(records) < 500):
        _check_image(record.path)


class BadImageError(Exception):
    """An image that cannot be decoded (truncated, not an image, missing file): skipped and counted."""


DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


def decode_image(image: bytes | str | Path, resolution: int) -> np.ndarray:
    """`load_image` of encoded bytes or a file path; any decoding failure becomes `BadImageError` (with the reason)."""
    try:
        return load_image(io.BytesIO(image) if isinstance(image, bytes) else Path(image), resolution)
    except DECODE_ERRORS as err:
        raise BadImageError(f"{type(err).__name__}: {err}") from err


def load_image(path: Path | io.BytesIO, resolution: int) -> np.ndarray:
    """RGB uint8 (resolution, resolution, 3): shorter side resized to `resolution`, then centre-cropped."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        scale = resolution / min(im.size)
        if scale != 1.0:
            size = (max(resolution, round(im.width * scale)), max(resolution, round(im.height * scale)))
            im = im.resize(size, Image.Resampling.BICUBIC)
        left, top = (im.width - resolution) // 2, (im.height - resolution) // 2
        return np.asarray(im.crop((left, top, left + resolution, top + resolution)), dtype=np.uint8)


def epoch_index(position: int, size: int, seed: int) -> int:
    """Dataset index at `position` of an endless stream of seeded per-epoch permutations.

    A pure function of (position, seed): resuming at any step replays exactly the same data order.
    """
    epoch, offset = divmod(position, size)
    return int(_permutation(size, seed, epoch)[offset])


@lru_cache(maxsize=8)
def _permutation(size: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(size)


def derive_seed(*parts: int) -> int:
    """A seed that is a pure function of `parts` (e.g. seed, step, micro-batch, rank)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def builtin_data(cfg: DistillConfig, run: Path) -> tuple[Path, Path | None]:
    from refine_control.builtin.shapes import write_image_folder

    labelled = run / "data" / "labelled"
    if not (labelled / "metadata.jsonl").is_file():
        write_image_folder(labelled, "train", cfg.builtin_labelled, cfg.seed, captions=True)
    if cfg.builtin_unlabelled == 0:
        return labelled, None
    unlabelled = run / "data" / "unlabelled"
    if not (unlabelled / "metadata.jsonl").is_file():
        write_image_folder(unlabelled, "unlabelled", cfg.builtin_unlabelled, cfg.seed, captions=False)
    return labelled, unlabelled


def training_data_paths(cfg: DistillConfig, run: Path) -> tuple[str, str | None]:
    """The labelled and unlabelled data paths of a run (the builtin teacher's shapes are written into RUN/data)."""
    labelled_dir, unlabelled_dir = cfg.labelled, cfg.unlabelled
    if cfg.teacher == "builtin" and labelled_dir is None:
        labelled_path, unlabelled_path = builtin_data(cfg, run)
        labelled_dir = str(labelled_path)
        if unlabelled_dir is None and unlabelled_path is not None:
            unlabelled_dir = str(unlabelled_path)
    if labelled_dir is None:
        raise ConfigError("`--labelled DIR` is required with a teacher other than builtin")
    return labelled_dir, unlabelled_dir


def load_training_data(cfg: DistillConfig, run: Path) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """The labelled and unlabelled records of a run's image folders."""
    labelled_dir, unlabelled_dir = training_data_paths(cfg, run)
    records = read_image_folder(labelled_dir)
    labelled = [r for r in records if r.text is not None]
    unlabelled = [r for r in records if r.text is None]
    if unlabelled_dir is not None:
        unlabelled += [ImageRecord(r.path, None) for r in read_image_folder(unlabelled_dir)]
    if not labelled:
        raise ConfigError(
            f"{labelled_dir} has no captioned images (metadata.jsonl `text`)",
            hint="stage 1 needs image + caption pairs; put captions in metadata.jsonl",
        )
    return labelled, unlabelled
