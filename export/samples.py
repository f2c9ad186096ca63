"""Real inputs for calibration and parity: prompts and control images made from the run's own data.

The controls come from the run's preprocessor applied to the run's labelled images at the run's resolution, the
prompts are their captions, and each sample has its own seed. Calibration and parity use disjoint samples.
"""

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from refine_control.data.folders import load_image, read_image_folder
from refine_control.errors import ConfigError
from refine_control.preprocess import get_preprocessor

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample:
    prompt: str
    control: np.ndarray  # (H, W, 3) float32 in the preprocessor's range
    seed: int


def run_data_dir(run: Path, config: dict[str, Any], override: Path | None = None) -> Path:
    """The labelled image folder the run was trained on (or `override`)."""
    if override is not None:
        return override
    if config.get("labelled"):
        return Path(config["labelled"])
    # The built-in teacher's generated shapes live in the run dir that made them: this one, the compact stage of a
    # default-recipe run, or the run a `--from` stage started from (and so on back).
    candidates, seen = [run, run / "stages" / "compact"], set()
    while candidates:
        where = candidates.pop(0)
        if where in seen:
            continue
        seen.add(where)
        if (where / "data" / "labelled" / "metadata.jsonl").is_file():
            return where / "data" / "labelled"
        config_file = where / "config.json"
        source = json.loads(config_file.read_text()).get("from_run") if config_file.is_file() else None
        if source:
            candidates.append(Path(source))
    raise ConfigError(
        f"cannot find the data run {run} was trained on",
        hint="pass an image folder with captions (metadata.jsonl) with --data DIR",
    )


def load_samples(data_dir: Path, preprocessor_name: str, resolution: int, count: int, seed: int = 0) -> list[Sample]:
    """`count` samples spread evenly over the captioned images of `data_dir` (cycling if there are fewer)."""
    if not data_dir.is_dir():
        raise ConfigError(f"the run's data folder {data_dir} is missing", hint="pass the image folder with --data DIR")
    shards = any(data_dir.rglob("*.parquet")) or any(data_dir.rglob("*.tar"))
    if shards and not (data_dir / "metadata.jsonl").is_file():
        raise ConfigError(
            f"{data_dir} holds parquet / webdataset shards; the export's calibration and parity samples come from an "
            "image folder",
            hint="pass a few captioned photos as a folder (images + metadata.jsonl) with --data DIR",
        )
    records = [r for r in read_image_folder(data_dir) if r.text is not None] or read_image_folder(data_dir)
    preprocessor = get_preprocessor(preprocessor_name)
    picks = np.linspace(0, len(records), num=count, endpoint=False).astype(int) if count <= len(records) else None
    samples = []
    for i in range(count):
        record = records[int(picks[i])] if picks is not None else records[i % len(records)]
        rng = np.random.default_rng([seed, i])
        control = preprocessor(load_image(record.path, resolution), rng)
        samples.append(Sample(record.text or "", control, seed + i))
    return samples
