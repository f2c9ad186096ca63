"""Open a dataset path with Hugging Face `datasets`: an image folder, parquet shards or webdataset tar shards.

Only local files are read (`HF_DATASETS_OFFLINE`); nothing is downloaded. Images stay undecoded (`Image(decode=False)`:
bytes or a path) until a data worker needs them, so opening a million-row dataset costs a listing, not a decode.
A row with a non-empty caption is labelled, one without is unlabelled. Map-style sources (the default) are indexed
by the trainer's seeded permutation; `--streaming` sources are read in order, shard by shard, never in full.
"""

import hashlib
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from refine_control.errors import ConfigError

PARQUET, WEBDATASET, FOLDER = "parquet", "webdataset", "folder"
IMAGE_COLUMNS = ("image", "jpg", "jpeg", "png", "webp")  # tried in this order when `--image-column` is not given
CAPTION_COLUMNS = ("text", "txt", "caption")  # same for `--caption-column`
STREAM_SHARDS = 64  # an image folder streamed is split into this many shards (for per-process sharding)


def offline_datasets() -> None:
    """`datasets` must never reach the hub, nor draw its progress bars into the training log."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


@dataclass(frozen=True)
class RawSample:
    """One row before decoding: its cache key, its image (encoded bytes or a file path) and its caption."""

    key: str
    image: bytes | str
    caption: str | None


@dataclass(frozen=True)
class Source:
    """A dataset path opened with `datasets` (image column cast to `Image(decode=False)`)."""

    path: str
    kind: str
    dataset: Any  # datasets.Dataset, or datasets.IterableDataset when streaming
    image_column: str
    caption_column: str | None

    @property
    def streaming(self) -> bool:
        return not hasattr(self.dataset, "__len__")

    def raw(self, row: dict[str, Any], index: int | None = None) -> RawSample:
        image = row[self.image_column]
        data: bytes | str | None = image.get("bytes") or image.get("path") if isinstance(image, dict) else image
        if not data:
            data = b""  # an empty cell: undecodable, so counted as a bad sample
        caption = row.get(self.caption_column) if self.caption_column else None
        caption = caption if isinstance(caption, str) and caption.strip() else None
        if self.kind == FOLDER:
            key = str(image.get("path")) if isinstance(image, dict) else str(data)
        elif self.kind == WEBDATASET and "__key__" in row:
            key = f"{row.get('__url__', self.path)}#{row['__key__']}"
        elif index is not None:
            key = f"{self.path}#{index}"
        else:  # a streamed row has no index: its stored file name, or its content
            name = image.get("path") if isinstance(image, dict) else None
            key = f"{self.path}#{name or hashlib.sha1(data if isinstance(data, bytes) else data.encode()).hexdigest()}"
        return RawSample(key, data, caption)


def _shard_files(path: Path) -> tuple[str, list[Path]] | None:
    """(kind, files) when `path` is a parquet / tar shard, or a folder (searched recursively) holding such shards."""
    if path.is_file():
        kind = {".parquet": PARQUET, ".tar": WEBDATASET}.get(path.suffix.lower())
        return (kind, [path]) if kind else None
    for kind, pattern in ((PARQUET, "*.parquet"), (WEBDATASET, "*.tar")):
        files = sorted(path.rglob(pattern))
        if files:
            return kind, files
    return None


def _check_parquet_schemas(files: list[Path]) -> None:
    import pyarrow.parquet as pq

    first = pq.read_schema(files[0])
    for other in files[1:]:
        schema = pq.read_schema(other)
        if not schema.equals(first, check_metadata=False):
            raise ConfigError(
                f"parquet shards with different schemas: {files[0].name} has {_columns(first)}, "
                f"{other.name} has {_columns(schema)}",
                hint="every shard of one dataset must have the same columns and types; rewrite the odd ones",
            )


def _columns(schema: Any) -> str:
    return ", ".join(f"{f.name}: {f.type}" for f in schema)


def _tar_fields(path: Path) -> set[str]:
    """The extensions of the first sample of a webdataset shard (what `datasets` turns into columns)."""
    try:
        with tarfile.open(path) as tar:
            first, fields = None, set()
            for member in tar:
                if not member.isfile():
                    continue
                stem, _, ext = Path(member.name).name.partition(".")
                if first is None:
                    first = stem
                elif stem != first:
                    break
                fields.add(ext.lower())
            return fields
    except (OSError, tarfile.TarError) as err:
        raise ConfigError(f"webdataset shard {path} cannot be read ({err})") from err


def _check_tar_fields(files: list[Path]) -> None:
    first = _tar_fields(files[0])
    for other in files[1:]:
        fields = _tar_fields(other)
        if fields != first:
            raise ConfigError(
                f"webdataset shards with different fields: {files[0].name} has {sorted(first)}, "
                f"{other.name} has {sorted(fields)}",
                hint="every sample of every shard must have the same extensions (e.g. .jpg and .txt)",
            )


def _pick(columns: list[str], wanted: str | None, defaults: tuple[str, ...], what: str, flag: str, path: str) -> str:
    if wanted is not None:
        if wanted not in columns:
            raise ConfigError(
                f"{path} has no {what} column {wanted!r} (columns: {', '.join(columns)})",
                hint=f"pass {flag} with one of the columns above",
            )
        return wanted
    for name in defaults:
        if name in columns:
            return name
    raise ConfigError(
        f"{path} has no {what} column (looked for {', '.join(defaults)}; columns: {', '.join(columns)})",
        hint=f"pass {flag} NAME",
    )


def _folder_dataset(root: Path, check: bool | None, upfront_max_rows: int) -> Any:
    """An image folder (metadata.jsonl convention, read and checked as before) as a `datasets.Dataset`.

    `check` None: decode every image now when the folder has at most `upfront_max_rows` of them."""
    from datasets import Dataset, Features, Image, Value

    from refine_control.data.folders import check_records, read_image_folder

    records = read_image_folder(root, check=False)
    if check or (check is None and len(records) <= upfront_max_rows):
        check_records(records, root)
    features = Features({"image": Image(decode=False), "text": Value("string")})
    rows = {"image": [{"path": str(r.path), "bytes": None} for r in records], "text": [r.text for r in records]}
    return Dataset.from_dict(rows, features=features)


def open_source(
    path: str | Path,
    *,
    streaming: bool = False,
    caption_column: str | None = None,
    image_column: str | None = None,
    check_folder: bool | None = True,
    upfront_max_rows: int = 0,
    captions: bool = True,
) -> Source:
    """Open `path` (an image folder, a parquet or tar shard, or a folder of shards) for training.

    `check_folder` decodes every image of an image folder now (the strict up-front check; None: when it has at most
    `upfront_max_rows` images). `captions=False`
    opens a source of unlabelled images: its captions, if any, are not read."""
    from datasets import Image, load_dataset

    offline_datasets()
    root = Path(path).expanduser()
    if not root.exists():
        raise ConfigError(f"dataset path {root} does not exist")
    shards = _shard_files(root)
    if shards is None:
        is_folder = root.is_dir() and (
            (root / "metadata.jsonl").is_file()
            or any(p.suffix.lower() in _image_suffixes() for p in root.rglob("*") if p.is_file())
        )
        if not is_folder:
            raise ConfigError(
                f"dataset path {root} is neither an image folder nor parquet / webdataset shards",
                hint="pass a folder of images (with metadata.jsonl for captions), *.parquet or *.tar files, "
                "or a folder holding them",
            )
        dataset = _folder_dataset(root, check_folder, upfront_max_rows)
        if streaming:
            dataset = dataset.to_iterable_dataset(num_shards=min(STREAM_SHARDS, len(dataset)))
        return Source(str(root), FOLDER, dataset, "image", "text" if captions else None)
    kind, files = shards
    (_check_parquet_schemas if kind == PARQUET else _check_tar_fields)(files)
    try:
        dataset = load_dataset(kind, data_files=[str(f) for f in files], split="train", streaming=streaming)
    except (OSError, ValueError) as err:
        raise ConfigError(f"{root}: the {kind} shards cannot be read ({err})") from err
    columns = list(dataset.features or {})
    image = _pick(columns, image_column, IMAGE_COLUMNS, "image", "--image-column", str(root))
    caption = (
        _pick(columns, caption_column, CAPTION_COLUMNS, "caption", "--caption-column", str(root)) if captions else None
    )
    dataset = dataset.cast_column(image, Image(decode=False))
    if not streaming and caption is not None:
        dataset = dataset.select_columns([image, caption])
    return Source(str(root), kind, dataset, image, caption)


def _image_suffixes() -> set[str]:
    from refine_control.data.folders import IMAGE_SUFFIXES

    return IMAGE_SUFFIXES


class MapPool:
    """The rows of map-style sources that one stream draws from (e.g. the labelled ones): (source, row indices)."""

    def __init__(self, parts: list[tuple[Source, np.ndarray]]) -> None:
        self.parts = [(source, np.asarray(indices, np.int64)) for source, indices in parts]
        self.ends = np.cumsum([len(indices) for _, indices in self.parts])

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def row(self, i: int) -> RawSample:
        part = int(np.searchsorted(self.ends, i, side="right"))
        source, indices = self.parts[part]
        index = int(indices[i - (int(self.ends[part - 1]) if part else 0)])
        return source.raw(source.dataset[index], index)


@dataclass(frozen=True)
class StreamPool:
    """The rows of a streaming source that one stream reads (e.g. the labelled ones), in a seeded order."""

    source: Source
    labelled: bool | None  # True: captioned rows only; False: rows without caption; None: all rows

    def epoch(self, seed: int, rank: int, world: int, buffer: int) -> Iterator[RawSample]:
        """This process's rows for one epoch: shards shuffled by `seed`, a shuffle buffer, then every process
        keeps its own shards (or every world-th row when the shards do not divide evenly)."""
        from datasets.distributed import split_dataset_by_node

        dataset = self.source.dataset
        dataset = dataset.shuffle(seed=seed, buffer_size=max(1, buffer))  # 1: the shard order only
        if world > 1:
            dataset = split_dataset_by_node(dataset, rank=rank, world_size=world)
        # `iter`, not `__iter__`: in a DataLoader worker `__iter__` would split the shards again among the workers,
        # and the order would depend on their number (the loader splits micro-batches among them instead).
        for batch in dataset.iter(batch_size=64):
            columns = list(batch)
            for values in zip(*batch.values(), strict=True):
                yield from self._keep(self.source.raw(dict(zip(columns, values, strict=True))))

    def _keep(self, sample: RawSample) -> Iterator[RawSample]:
        if self.labelled is None or (sample.caption is not None) == self.labelled:
            yield sample


def split_labelled(source: Source) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the captioned and uncaptioned rows of a map-style source (reads the caption column only)."""
    if source.caption_column is None:
        return np.zeros(0, np.int64), np.arange(len(source.dataset))
    captions = source.dataset.select_columns([source.caption_column]).data.column(0).to_pylist()
    has = np.array([isinstance(c, str) and bool(c.strip()) for c in captions], bool)
    return np.flatnonzero(has), np.flatnonzero(~has)
