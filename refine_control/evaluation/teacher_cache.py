"""The teacher's evaluation images, kept in the judge cache: every evaluation of a run of one teacher with the same
settings (the demo's, a sweep's, an ablation's) samples the very same teacher images, the largest part of an
evaluation once the oracle is cached (benchmarks/eval_time.py).

The key is a digest of everything the images follow from: the teacher's files (and a ControlNet given apart), the
prompts, control images and initial noise, the sampling settings and seed, the torch and diffusers versions, and the
code that samples (generate.py and the sampling pipeline's layout and control cache). Images are stored as .npy
(never pickle), written atomically.
"""

import hashlib
import io
import json
import logging
from dataclasses import asdict
from pathlib import Path

import diffusers
import numpy as np
import torch

from refine_control.atomic import write_bytes
from refine_control.evaluation.generate import Sampling

logger = logging.getLogger(__name__)

_SAMPLING_CODE = ("evaluation/generate.py", "models/control_cache.py", "models/layout.py", "evaluation/evaluate.py")


def _update_with_folder(digest: "hashlib._Hash", folder: Path) -> None:
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(path.read_bytes())


def teacher_images_key(
    teacher_dir: Path,
    controlnet: Path | None,
    prompts: list[str],
    controls: np.ndarray,
    latents: torch.Tensor,
    sampling: Sampling,
    seed: int,
) -> str:
    """The digest that names one set of teacher images."""
    digest = hashlib.sha256()
    for folder in (teacher_dir, controlnet):
        if folder is not None:
            _update_with_folder(digest, Path(folder))
    package = Path(__file__).resolve().parents[1]
    for name in _SAMPLING_CODE:
        digest.update((package / name).read_bytes())
    settings = {"prompts": prompts, "sampling": asdict(sampling), "seed": seed}
    settings |= {"torch": torch.__version__, "diffusers": diffusers.__version__}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    digest.update(np.ascontiguousarray(controls).tobytes())
    digest.update(latents.contiguous().numpy().tobytes())
    return digest.hexdigest()[:20]


def load_teacher_images(cache: Path, key: str, count: int) -> np.ndarray | None:
    """The cached images for `key` (N, H, W, 3) uint8, or None (missing, unreadable, or not `count` images)."""
    path = cache / f"{key}.npy"
    if not path.is_file():
        return None
    try:
        images = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        logger.warning("ignoring the cached teacher images %s (%s)", path, err)
        return None
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) != count:
        logger.warning("ignoring the cached teacher images %s (shape %s)", path, images.shape)
        return None
    logger.info("reusing the teacher's images %s", path)
    return images


def save_teacher_images(cache: Path, key: str, images: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(images, dtype=np.uint8), allow_pickle=False)
    try:
        write_bytes(cache / f"{key}.npy", buffer.getvalue())
    except OSError as err:  # a read-only cache costs only time
        logger.warning("could not cache the teacher's images in %s (%s)", cache, err)
