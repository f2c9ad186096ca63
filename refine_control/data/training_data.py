"""A run's training data: `--labelled` / `--unlabelled` opened as `datasets` sources and split into streams.

`--validate auto` (the default) keeps the strict up-front check for small map-style datasets (every image decoded
before the first step; a bad file stops the run by name, as before) and validates lazily otherwise (the bad-data
policy of `bad_data.py`). `--validate upfront` needs to read the whole dataset, which `--streaming` exists to avoid.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from refine_control.data.batches import LABELLED, UNLABELLED, Batches, MapBatches, StreamBatches
from refine_control.data.folders import BadImageError, decode_image, training_data_paths
from refine_control.data.sources import FOLDER, MapPool, Source, StreamPool, open_source, split_labelled
from refine_control.errors import ConfigError
from refine_control.training.config import DistillConfig

UPFRONT_MAX_ROWS = 10_000  # `--validate auto` decodes every image up front up to this many rows


@dataclass(frozen=True)
class TrainingData:
    cfg: DistillConfig
    labelled: Source
    unlabelled: Source | None
    map_pools: dict[int, MapPool] | None  # None when streaming

    @property
    def streaming(self) -> bool:
        return self.map_pools is None

    @property
    def rows(self) -> tuple[int | None, int | None]:
        """(labelled, unlabelled) rows; None when streaming (unknown without reading everything)."""
        if self.map_pools is None:
            return None, None
        return len(self.map_pools[LABELLED]), len(self.map_pools[UNLABELLED])

    @property
    def has_unlabelled(self) -> bool:
        if self.map_pools is None:
            return self.unlabelled is not None
        return len(self.map_pools[UNLABELLED]) > 0

    def batches(self, size: int, world: int, stage1_steps: int, rank: int) -> Batches:
        if self.map_pools is not None:
            return MapBatches(self.map_pools, self.cfg, size, world, stage1_steps)
        unlabelled = [StreamPool(self.labelled, False)]
        if self.unlabelled is not None:
            unlabelled.append(StreamPool(self.unlabelled, None))
        pools = {LABELLED: [StreamPool(self.labelled, True)], UNLABELLED: unlabelled}
        return StreamBatches(pools, self.cfg, size, world, stage1_steps, rank)


def _check_every_row(pool: MapPool, size: int) -> None:
    for i in range(len(pool)):
        raw = pool.row(i)
        try:
            decode_image(raw.image, size)
        except BadImageError as err:
            raise ConfigError(
                f"image {raw.key} cannot be read ({err})",
                hint="remove or replace it, or pass --validate lazy to skip undecodable images",
            ) from err


def _open(cfg: DistillConfig, path: str, captions: bool) -> Source:
    if cfg.streaming:
        check = False
    elif cfg.validate == "auto":
        check = None  # decided below from the number of rows, for image folders while they are listed
    else:
        check = cfg.validate == "upfront"
    kwargs = {"caption_column": cfg.caption_column, "image_column": cfg.image_column, "captions": captions}
    return open_source(path, streaming=cfg.streaming, check_folder=check, upfront_max_rows=UPFRONT_MAX_ROWS, **kwargs)


def open_training_data(cfg: DistillConfig, run: Path) -> TrainingData:
    """Open the labelled (and unlabelled) data of a run (the builtin teacher's shapes are written into RUN/data)."""
    labelled_dir, unlabelled_dir = training_data_paths(cfg, run)
    labelled = _open(cfg, labelled_dir, captions=True)
    unlabelled = _open(cfg, unlabelled_dir, captions=False) if unlabelled_dir is not None else None
    if cfg.streaming:
        return TrainingData(cfg, labelled, unlabelled, None)

    captioned, uncaptioned = split_labelled(labelled)
    if len(captioned) == 0:
        raise ConfigError(
            f"{labelled_dir} has no captioned images ({labelled.caption_column or 'caption'} column / metadata.jsonl "
            "`text`)",
            hint="stage 1 needs image + caption pairs; put captions in metadata.jsonl or pass --caption-column",
        )
    pools = {LABELLED: MapPool([(labelled, captioned)])}
    parts = [(labelled, uncaptioned)]
    if unlabelled is not None:
        parts.append((unlabelled, np.arange(len(unlabelled.dataset))))
    pools[UNLABELLED] = MapPool(parts)
    size = cfg.resolution or 8  # decoding is what is checked; the size only has to be valid
    for source in (labelled, unlabelled):
        if source is None or source.kind == FOLDER:  # folders were checked (or not) while listed
            continue
        rows = len(source.dataset)
        if cfg.validate == "upfront" or (cfg.validate == "auto" and rows <= UPFRONT_MAX_ROWS):
            _check_every_row(MapPool([(source, np.arange(rows))]), size)
    return TrainingData(cfg, labelled, unlabelled, pools)
