"""The training batches of `train(cfg)`: which rows a (step, micro-batch, process) sees is a pure function of them.

Map-style data: position `slot * count + j` of an endless stream of seeded per-epoch permutations, where the slot
counts (step, micro-batch, rank) across all processes, so processes draw disjoint samples and a resumed run (on any
number of processes) replays the same data. Streaming data: each process reads its own shards (`split_dataset_by_node`)
in a seeded order, and sample j of a micro-batch is at a position of that local stream computed from (step,
micro-batch) alone; a resumed run reads past the earlier rows without decoding them and continues at the exact sample.

Every random draw of a sample (caption dropout, the control image's augmentation, and in the trainer its noise and
timestep) is seeded by (seed, step, the sample's index in the step's global batch), so an optimizer step sees the
same samples with the same draws however it is split into micro-batches.

A row whose image cannot be decoded is replaced by the next decodable row of the same stream (deterministic, so
resume stays exact), and reported in the micro-batch (`MicroBatch.bad`) for the bad-data policy.
"""

import itertools
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from refine_control.data.folders import BadImageError, decode_image, derive_seed, epoch_index
from refine_control.data.sources import MapPool, RawSample, StreamPool
from refine_control.errors import ConfigError, RefineError
from refine_control.preprocess import get_preprocessor
from refine_control.training.config import DistillConfig

LABELLED, UNLABELLED, REPLAY = 0, 1, 2  # data streams, each with its own seeded order
MAX_LOOKAHEAD = 64  # consecutive undecodable rows after which a stream is declared broken


@dataclass
class MicroBatch:
    """images (B, H, W, 3) uint8, captions, controls (B, H, W, 3) float32, cache keys and each sample's seed."""

    step: int
    micro: int
    images: np.ndarray
    captions: list[str]
    controls: np.ndarray
    keys: list[str]
    seeds: list[int]
    streams: list[int] = field(default_factory=list)  # each sample's stream (LABELLED, UNLABELLED, REPLAY)
    drawn: int = 0  # samples drawn at their own position (the bad-data fraction's denominator)
    bad: list[tuple[str, str]] = field(default_factory=list)  # (key, reason) of those that failed to decode


def stage_parts(cfg: DistillConfig, stage: int) -> list[tuple[int, int]]:
    """(stream, samples per micro-batch) of a stage."""
    if stage == 1:
        return [(LABELLED, cfg.batch_size)]
    n_replay = round(cfg.batch_size * cfg.replay_ratio)
    return [(UNLABELLED, cfg.batch_size - n_replay), (REPLAY, n_replay)]


class Batches:
    """Draws micro-batches; `reader(stream, position)` gives a stream's row at a position (map-style or streaming)."""

    def __init__(self, cfg: DistillConfig, size: int, world: int, stage1_steps: int) -> None:
        self.cfg, self.size, self.world, self.stage1_steps = cfg, size, world, stage1_steps
        self.preprocessor = get_preprocessor(cfg.preprocessor)

    def positions(self, step: int, micro: int, rank: int, stream: int, count: int) -> list[int]:
        raise NotImplementedError

    def read(self, stream: int, position: int) -> RawSample:
        raise NotImplementedError

    def get(self, step: int, micro: int, rank: int) -> MicroBatch:
        cfg = self.cfg
        stage = 1 if step < self.stage1_steps else 2
        slot_in_step = micro * self.world + rank
        # The few-step stage always shows the caption: its guidance input needs the conditional prediction.
        dropout = 0.0 if cfg.few_step else cfg.prompt_dropout
        out = MicroBatch(step, micro, np.zeros(0), [], np.zeros(0), [], [])
        images, controls = [], []
        for stream, count in stage_parts(cfg, stage):
            for position in self.positions(step, micro, rank, stream, count):
                raw, image = self._decoded(stream, position, out)
                seed = derive_seed(cfg.seed, step, slot_in_step * cfg.batch_size + len(out.seeds))
                rng = np.random.default_rng(derive_seed(seed, 7))
                caption = "" if stream == UNLABELLED else (raw.caption or "")
                images.append(image)
                out.captions.append("" if rng.random() < dropout else caption)
                controls.append(self.preprocessor(image, rng))
                out.keys.append(raw.key)
                out.seeds.append(seed)
                out.streams.append(stream)
        out.images, out.controls = np.stack(images), np.stack(controls)
        return out

    def _decoded(self, stream: int, position: int, out: MicroBatch) -> tuple[RawSample, np.ndarray]:
        """The row at `position`, or when it cannot be decoded the next row of the stream that can."""
        out.drawn += 1
        for ahead in range(MAX_LOOKAHEAD + 1):
            raw = self.read(stream, position + ahead)
            try:
                return raw, decode_image(raw.image, self.size)
            except BadImageError as err:
                if ahead == 0:
                    out.bad.append((raw.key, str(err)))
        raise RefineError(
            f"{MAX_LOOKAHEAD + 1} consecutive samples could not be decoded (the last: {raw.key})",
            hint="check the dataset: its images are unreadable (see logs/bad_files.txt)",
        )


class MapBatches(Batches):
    """Batches over map-style pools (random access): a seeded permutation per epoch and stream."""

    def __init__(self, pools: dict[int, MapPool], cfg: DistillConfig, size: int, world: int, stage1: int) -> None:
        super().__init__(cfg, size, world, stage1)
        self.pools = pools

    def positions(self, step: int, micro: int, rank: int, stream: int, count: int) -> list[int]:
        slot = step * self.cfg.grad_accum * self.world + micro * self.world + rank
        return [slot * count + j for j in range(count)]

    def read(self, stream: int, position: int) -> RawSample:
        pool = self.pools[LABELLED if stream == REPLAY else stream]
        return pool.row(epoch_index(position, len(pool), derive_seed(self.cfg.seed, stream)))


class StreamBatches(Batches):
    """Batches over streaming pools: this process's rows of each stream, read forward once."""

    def __init__(
        self, pools: dict[int, list[StreamPool]], cfg: DistillConfig, size: int, world: int, stage1: int, rank: int
    ) -> None:
        super().__init__(cfg, size, world, stage1)
        self.pools, self.rank = pools, rank
        self._cursors: dict[int, _Cursor] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_cursors": {}}  # a data worker starts its own readers

    def reset(self) -> None:
        """Read every stream again from its start (each iteration of the loader does)."""
        self._cursors = {}

    def consumed(self, step: int, stream: int) -> int:
        """Rows of `stream` this process used before `step` (a pure function of the step)."""
        cfg, s1 = self.cfg, self.stage1_steps
        per_micro = dict(stage_parts(cfg, 1) + stage_parts(cfg, 2))[stream]
        steps = min(step, s1) if stream == LABELLED else max(0, step - s1)
        return steps * cfg.grad_accum * per_micro

    def positions(self, step: int, micro: int, rank: int, stream: int, count: int) -> list[int]:
        first = self.consumed(step, stream) + micro * count
        if stream in self._cursors:
            self._cursors[stream].forget_before(first)
        return [first + j for j in range(count)]

    def read(self, stream: int, position: int) -> RawSample:
        if stream not in self._cursors:
            self._cursors[stream] = _Cursor(self._rows(stream))
        return self._cursors[stream].at(position)

    def _rows(self, stream: int) -> Iterator[RawSample]:
        """This process's rows of a stream, epoch after epoch (each epoch in its own seeded order)."""
        pools = self.pools[LABELLED if stream == REPLAY else stream]
        for epoch in itertools.count():
            seed = derive_seed(self.cfg.seed, stream, epoch) % 2**31
            empty = True
            for pool in pools:
                for row in pool.epoch(seed, self.rank, self.world, self.cfg.shuffle_buffer):
                    empty = False
                    yield row
            if empty:
                what = "captioned" if stream != UNLABELLED else "uncaptioned"
                raise ConfigError(
                    f"process {self.rank} of {self.world} found no {what} rows in its part of the streamed dataset",
                    hint="use more shards than processes, or check --caption-column",
                )


class _Cursor:
    """Random access at non-decreasing positions to a forward-only iterator (a bounded window of rows)."""

    def __init__(self, rows: Iterator[RawSample]) -> None:
        self.rows, self.window, self.start = rows, deque(), 0  # `start`: position of window[0]

    def forget_before(self, position: int) -> None:
        while self.window and self.start < position:
            self.window.popleft()
            self.start += 1

    def at(self, position: int) -> RawSample:
        if position < self.start:
            raise RuntimeError(f"stream position {position} was already passed ({self.start})")
        while self.start + len(self.window) <= position:
            row = next(self.rows)
            if self.start + len(self.window) < position and not self.window:
                self.start += 1  # a row before the needed one: pass it without keeping it
                continue
            self.window.append(row)
        return self.window[position - self.start]
