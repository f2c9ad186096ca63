"""The datasets-based data layer without a model: sources, streams, per-process shards, exact resume, workers,
and the bad-data policy (tiny parquet / webdataset shards and image folders made here)."""

from pathlib import Path

import numpy as np
import pytest
from tiny_models import write_image_folder, write_parquet_shards, write_tar_shards

from refine_control.data.bad_data import BadDataPolicy
from refine_control.data.loader import micro_batches
from refine_control.data.sources import open_source
from refine_control.data.training_data import open_training_data
from refine_control.errors import ConfigError, RefineError
from refine_control.training.config import DistillConfig


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    # datasets waits 5 s after each streamed parquet epoch (an Arrow shutdown workaround); tiny epochs here.
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)


def _batches(tmp_path: Path, data: Path, *, world: int = 1, rank: int = 0, stage1: int = 100, **options):
    cfg = DistillConfig(tmp_path / "run", teacher="x", labelled=str(data), batch_size=2, **options)
    training = open_training_data(cfg, cfg.output_dir)
    return training, training.batches(16, world, stage1, rank)


def _take(batches, start: int, total: int, *, rank: int = 0, workers: int = 0) -> list:
    return list(micro_batches(batches, start, total, batches.cfg.grad_accum, rank, workers))


def _same(a, b) -> bool:
    return (
        (a.step, a.micro, a.keys, a.captions, a.seeds) == (b.step, b.micro, b.keys, b.captions, b.seeds)
        and np.array_equal(a.images, b.images)
        and np.array_equal(a.controls, b.controls)
    )


def test_parquet_shards_with_a_configurable_caption_column(tmp_path):
    data = write_parquet_shards(tmp_path / "pq", 10, caption_column="prompt", unlabelled_every=5)
    with pytest.raises(
        ConfigError, match=r"no caption column \(looked for text, txt, caption; columns: image, prompt"
    ):
        open_source(data)
    training, batches = _batches(tmp_path, data, caption_column="prompt")
    assert training.rows == (8, 2)  # rows 0 and 5 have no caption: unlabelled
    first = batches.get(0, 0, 0)
    assert first.images.shape == (2, 16, 16, 3) and first.images.dtype == np.uint8
    assert all(c in ("", "a red square", "a green square", "a blue square") for c in first.captions)
    assert all(k.startswith(str(data)) for k in first.keys)


def test_webdataset_shards_are_read_with_their_txt_captions(tmp_path):
    data = write_tar_shards(tmp_path / "wds", 6, image_ext="png")
    source = open_source(data)
    assert (source.kind, source.image_column, source.caption_column) == ("webdataset", "png", "txt")
    training, batches = _batches(tmp_path, data, prompt_dropout=0.0)
    assert training.rows == (6, 0)
    assert {c for b in _take(batches, 0, 3) for c in b.captions} <= {"a red square", "a green square", "a blue square"}


@pytest.mark.parametrize("kind", ["parquet", "webdataset"])
def test_streaming_gives_each_process_disjoint_shards_and_resumes_at_the_exact_sample(tmp_path, kind):
    write = write_parquet_shards if kind == "parquet" else write_tar_shards
    data = write(tmp_path / kind, 16, shards=4)
    options = {"streaming": True, "shuffle_buffer": 4, "grad_accum": 2}
    ranks = [_batches(tmp_path, data, world=2, rank=r, **options)[1] for r in (0, 1)]
    # One epoch per process: 8 rows each, 2 steps of 2 micro-batches of 2.
    seen = [[k for b in _take(ranks[r], 0, 2, rank=r) for k in b.keys] for r in (0, 1)]
    assert len(set(seen[0])) == len(set(seen[1])) == 8
    assert not set(seen[0]) & set(seen[1])  # disjoint
    # A restart at step 3 (fresh objects, as a new process) continues with the very same samples, into epoch 2.
    straight = _take(ranks[0], 0, 7)
    restarted = _take(_batches(tmp_path, data, world=2, rank=0, **options)[1], 3, 7)
    assert len(restarted) == 8 and all(_same(a, b) for a, b in zip(straight[6:], restarted, strict=True))
    # Each epoch reshuffles (shards are dealt to the processes anew), so the comparison above can fail.
    epoch1 = [k for b in straight[:4] for k in b.keys]
    epoch2 = [k for b in straight[4:8] for k in b.keys]
    assert len(set(epoch2)) == 8 and epoch1 != epoch2


@pytest.mark.parametrize("streaming", [False, True])
def test_the_data_order_does_not_depend_on_the_number_of_workers(tmp_path, streaming):
    write = write_tar_shards if streaming else write_parquet_shards  # (streamed parquet: tested above)
    data = write(tmp_path / "shards", 12, shards=3)
    _, batches = _batches(tmp_path, data, streaming=streaming, grad_accum=2)
    alone = _take(batches, 1, 6)
    _, batches = _batches(tmp_path, data, streaming=streaming, grad_accum=2)
    workers = _take(batches, 1, 6, workers=2)
    assert len(alone) == len(workers) == 10
    assert all(_same(a, b) for a, b in zip(alone, workers, strict=True))


def test_map_style_processes_draw_disjoint_samples_and_an_image_folder_streams_too(tmp_path):
    folder = write_image_folder(tmp_path / "f", 8)
    keys = [
        {k for b in _take(_batches(tmp_path, folder, world=2, rank=r)[1], 0, 2, rank=r) for k in b.keys}
        for r in (0, 1)
    ]
    assert len(keys[0] | keys[1]) == 8 and not keys[0] & keys[1]
    _, streamed = _batches(tmp_path, folder, streaming=True)
    assert {k for b in _take(streamed, 0, 4) for k in b.keys} == {
        str((folder / f"{i:04d}.png").resolve()) for i in range(8)
    }


@pytest.mark.parametrize(("ratio", "unlabelled"), [(0.5, 1), (1.0, 0)])
def test_stage_2_mixes_unlabelled_rows_and_labelled_replay_by_the_replay_ratio(tmp_path, ratio, unlabelled):
    """Each stage-2 micro-batch of 2: one unlabelled row (empty caption) and one replayed labelled row at 0.5; at 1.0
    only labelled rows (stage 2's schedule without the unlabelled images: the control arm of the ablation)."""
    folder = write_image_folder(tmp_path / "f", 8)
    more = write_image_folder(tmp_path / "u", 8, labelled=False, seed=1)
    _, batches = _batches(tmp_path, folder, stage1=1, unlabelled=str(more), replay_ratio=ratio, prompt_dropout=0.0)
    for batch in _take(batches, 1, 4):  # steps 1-3: stage 2
        from_unlabelled = [k for k in batch.keys if k.startswith(str(more.resolve()))]
        assert len(from_unlabelled) == unlabelled and batch.captions.count("") == unlabelled


def _break(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:40])


@pytest.mark.parametrize("streaming", [False, True])
def test_an_undecodable_image_is_replaced_by_the_next_row_and_reported(tmp_path, streaming):
    folder = write_image_folder(tmp_path / "f", 8)
    _break(folder / "0003.png")
    if not streaming:  # small map-style data: the strict up-front check, by name, as before
        with pytest.raises(ConfigError, match=r"0003\.png cannot be read"):
            _batches(tmp_path, folder)
    _, batches = _batches(tmp_path, folder, streaming=streaming, validate="auto" if streaming else "lazy")
    items = _take(batches, 0, 4)  # one epoch: every row drawn once
    bad = [name for b in items for name, _ in b.bad]
    assert [Path(n).name for n in bad] == ["0003.png"]
    assert sum(b.drawn for b in items) == 8
    keys = [k for b in items for k in b.keys]
    assert str((folder / "0003.png").resolve()) not in keys and len(keys) == 8  # a replacement took its place


def test_bad_data_policy_names_files_and_stops_past_the_fraction(tmp_path):
    known = BadDataPolicy(tmp_path, 0, 0.001, dataset_rows=2000)
    known.update(10, [("a.png", "truncated")])
    known.update(10, [("b.png", "truncated")])  # 2 of 2000 = 0.1%: not more than the limit
    assert (tmp_path / "bad_files.txt").read_text() == "a.png\ttruncated\nb.png\ttruncated\n"
    with pytest.raises(RefineError, match="3 of 2000 rows are undecodable"):
        known.update(10, [("c.png", "not an image")])
    streamed = BadDataPolicy(tmp_path, 1, 0.01, dataset_rows=None)
    streamed.update(50, [("x", "bad")] * 5)  # 10% of 50 draws, but too few draws to judge a 1% limit
    with pytest.raises(RefineError, match="6 of 100 samples drawn were undecodable"):
        streamed.update(50, [("y", "bad")])
    assert (tmp_path / "bad_files.rank1.txt").read_text() == "x\tbad\ny\tbad\n"


def test_a_stream_of_nothing_but_bad_images_stops(tmp_path):
    folder = write_image_folder(tmp_path / "f", 4)
    for path in folder.glob("*.png"):
        _break(path)
    _, batches = _batches(tmp_path, folder, validate="lazy")
    with pytest.raises(RefineError, match="consecutive samples could not be decoded"):
        _take(batches, 0, 1)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("neither", "is neither an image folder nor parquet / webdataset shards"),
        ("missing", "does not exist"),
        ("parquet_schemas", "parquet shards with different schemas"),
        ("tar_fields", "webdataset shards with different fields"),
    ],
)
def test_bad_dataset_paths(tmp_path, case, message):
    if case == "neither":
        path = tmp_path / "notes"
        path.mkdir()
        (path / "readme.txt").write_text("no data here")
    elif case == "missing":
        path = tmp_path / "nowhere"
    elif case == "parquet_schemas":
        path = write_parquet_shards(tmp_path / "pq", 4)
        write_parquet_shards(tmp_path / "other", 2, shards=1, caption_column="prompt")
        (tmp_path / "other" / "train-00000.parquet").rename(path / "train-00009.parquet")
    else:
        path = write_tar_shards(tmp_path / "wds", 4)
        write_tar_shards(tmp_path / "other", 2, shards=1, image_ext="jpg")
        (tmp_path / "other" / "train-00000.tar").rename(path / "train-00009.tar")
    with pytest.raises(ConfigError, match=message) as err:
        open_source(path)
    assert err.value.exit_code == 2
