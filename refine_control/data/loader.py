"""The micro-batches of a run, decoded and preprocessed in `--num-workers` data workers (torch DataLoader).

The order never depends on the number of workers: with a map-style dataset each item is one (step, micro-batch),
computed from them alone; with a streaming one, worker w of k builds micro-batches w, w+k, ... and reads past the
others' rows without decoding them, and the DataLoader hands the items back in order. An error in a worker travels
as a `Failure` item and is raised again in the trainer, so the CLI still prints one `error:` line.
"""

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from refine_control.data.batches import Batches, MicroBatch, StreamBatches
from refine_control.errors import RefineError

# Workers start fresh, not forked: a fork after OpenCV, OpenMP or Arrow started their thread pools can deadlock.
WORKER_START = "forkserver"


@dataclass(frozen=True)
class Failure:
    message: str
    hint: str | None
    exit_code: int

    def reraise(self) -> None:
        err = RefineError(self.message, self.hint)
        err.exit_code = self.exit_code
        raise err


def _guarded(batches: Batches, step: int, micro: int, rank: int) -> MicroBatch | Failure:
    try:
        batch = batches.get(step, micro, rank)
    except RefineError as err:
        return Failure(str(err), err.hint, err.exit_code)
    if get_worker_info() is not None:  # tensors cross to the trainer in shared memory, arrays through a pipe
        batch.images, batch.controls = torch.from_numpy(batch.images), torch.from_numpy(batch.controls)
    return batch


class _MapItems(Dataset):
    def __init__(self, batches: Batches, plan: list[tuple[int, int]], rank: int) -> None:
        self.batches, self.plan, self.rank = batches, plan, rank

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, i: int) -> MicroBatch | Failure:
        step, micro = self.plan[i]
        return _guarded(self.batches, step, micro, self.rank)


class _StreamItems(IterableDataset):
    def __init__(self, batches: StreamBatches, plan: list[tuple[int, int]], rank: int) -> None:
        self.batches, self.plan, self.rank = batches, plan, rank

    def __iter__(self) -> Iterator[MicroBatch | Failure]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        self.batches.reset()
        for i, (step, micro) in enumerate(self.plan):
            if i % workers == worker:
                item = _guarded(self.batches, step, micro, self.rank)
                yield item
                if isinstance(item, Failure):
                    return


def _keep(item: object) -> object:
    return item  # no collation: the items are already batches of numpy arrays


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:  # pragma: no cover - opencv is a dependency of the preprocessors
        pass


def micro_batches(
    batches: Batches, start: int, total: int, grad_accum: int, rank: int, num_workers: int
) -> Iterator[MicroBatch]:
    """Micro-batches (step, micro) for steps `start` … `total` - 1 of process `rank`, in order."""
    plan = [(step, micro) for step in range(start, total) for micro in range(grad_accum)]
    if not plan:
        return
    streaming = isinstance(batches, StreamBatches)
    items: Dataset = _StreamItems(batches, plan, rank) if streaming else _MapItems(batches, plan, rank)
    loader = DataLoader(
        items,
        batch_size=None,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_keep,
        worker_init_fn=_worker_init if num_workers else None,
        prefetch_factor=2 if num_workers else None,
        multiprocessing_context=WORKER_START if num_workers else None,
    )
    for item in loader:
        if isinstance(item, Failure):
            item.reraise()
        if isinstance(item.images, torch.Tensor):
            item.images, item.controls = item.images.numpy(), item.controls.numpy()
        yield item
