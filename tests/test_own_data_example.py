"""docs/own-data.md's worked example (benchmarks/own_data_example.py) runs: scikit-image's photos → a captioned
folder (or parquet) → the real `refine-distill` on the built-in teacher → `refine-export` with parity → one image
from the exported model. At minimum size here, so the page cannot rot."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--photos", "2", "--crops", "2", "--image-size", "96", "--steps", "2", "--batch-size", "2"]
FAST_EXPORT = ["--exporter", "torchscript", "--parity-samples", "1", "--threads", "1"]


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("own_data_example", ROOT / "benchmarks" / "own_data_example.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_photos_are_files_inside_the_scikit_image_wheel(example):
    """Read from skimage/data/ as installed: none of them would be fetched (pooch) on first use."""
    import skimage.data

    folder = Path(skimage.data.__file__).parent
    assert all((folder / name).is_file() for name in example.PHOTOS)
    photo = example.skimage_photo("camera.png")  # a grey photo comes out RGB
    assert photo.dtype == np.uint8 and photo.shape == (512, 512, 3)


def test_example_runs_end_to_end_at_minimum_size(example, tmp_path, capsys):
    work = tmp_path / "own"
    assert example.main(["--work", str(work), *SMALL, *FAST_EXPORT]) == 0
    rows = [json.loads(line) for line in (work / "photos" / "metadata.jsonl").read_text().splitlines()]
    assert (
        len(rows) == 4
        and [r["text"] for r in rows] == [example.PHOTOS["astronaut.png"]] * 2 + [example.PHOTOS["chelsea.png"]] * 2
    )
    assert all(Image.open(work / "photos" / r["file_name"]).size == (96, 96) for r in rows)
    config = json.loads((work / "run" / "config.json").read_text())
    assert config["teacher"] == "builtin" and config["labelled"] == str(work / "photos")
    assert config["preprocessor"] == "canny" and config["max_steps"] == 2
    manifest = json.loads((work / "model" / "manifest.json").read_text())
    assert manifest["complete"] and json.loads((work / "model" / "parity.json").read_text())["passed"]
    sample = Image.open(work / "sample.png")
    assert sample.mode == "RGB" and sample.size == (64, 64)  # the built-in teacher's resolution
    summary = json.loads((work / "example.json").read_text())
    assert summary["images"] == 4 and "meaningless" in summary["quality"]
    out = capsys.readouterr().out
    assert "2. refine-distill --teacher builtin --labelled" in out and "3. refine-export" in out


def test_parquet_format_holds_the_same_captioned_rows(example, tmp_path):
    """`--format parquet`: a Hugging Face dataset written with `Dataset.to_parquet` that the data layer reads back
    with the same images and captions as the folder."""
    from refine_control.data.sources import open_source

    rows = example.write_photo_folder(tmp_path / "photos", 2, 3, 32)
    shards = example.write_parquet(tmp_path / "photos", rows, tmp_path / "parquet")
    source = open_source(shards)
    assert source.kind == "parquet" and len(source.dataset) == 6
    for i, row in enumerate(rows):
        raw = source.raw(source.dataset[i], i)
        assert raw.caption == row["text"]
        assert raw.image == (tmp_path / "photos" / row["file_name"]).read_bytes()


def test_bad_sizes_are_one_error_line(example, tmp_path, capsys):
    assert example.main(["--work", str(tmp_path / "w"), "--photos", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --photos must be in 1..16") and "Traceback" not in err
    assert not (tmp_path / "w").exists()


def test_export_samples_from_shards_say_to_pass_a_folder(example, tmp_path):
    """A run trained on parquet: the export's samples need an image folder (`--data DIR`), and the error says so."""
    from refine_control.errors import ConfigError
    from refine_control.export.samples import load_samples

    rows = example.write_photo_folder(tmp_path / "photos", 1, 2, 32)
    shards = example.write_parquet(tmp_path / "photos", rows, tmp_path / "parquet")
    with pytest.raises(ConfigError, match="holds parquet / webdataset shards") as info:
        load_samples(shards, "canny", 64, 1)
    assert "--data DIR" in info.value.hint
    samples = load_samples(tmp_path / "photos", "canny", 64, 2)  # the folder itself works
    assert [s.prompt for s in samples] == [example.PHOTOS["astronaut.png"]] * 2 and samples[0].control.shape == (
        64,
        64,
        3,
    )
