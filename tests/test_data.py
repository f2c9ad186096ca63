import json

import numpy as np
import pytest
from conftest import write_image_folder

from refine_control.data import epoch_index, load_image, read_image_folder
from refine_control.errors import ConfigError
from refine_control.preprocess import PREPROCESSORS, get_preprocessor


def test_records_with_text_are_labelled_and_without_are_not(tmp_path):
    root = write_image_folder(tmp_path / "f", 4)
    lines = (root / "metadata.jsonl").read_text().splitlines()
    lines[1] = json.dumps({"file_name": "0001.png"})
    (root / "metadata.jsonl").write_text("\n".join(lines))
    records = read_image_folder(root)
    assert [r.text is not None for r in records] == [True, False, True, True]


def test_folder_without_metadata_is_all_unlabelled(tmp_path):
    root = write_image_folder(tmp_path / "f", 3)
    (root / "metadata.jsonl").unlink()
    assert [r.text for r in read_image_folder(root)] == [None, None, None]


def test_truncated_image_is_named(tmp_path):
    root = write_image_folder(tmp_path / "f", 3)
    data = (root / "0002.png").read_bytes()
    (root / "0002.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ConfigError, match=r"0002\.png cannot be read"):
        read_image_folder(root)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "line 1 is not a JSON object"),
        (json.dumps({"text": "no file"}), "line 1 is not a JSON object with a `file_name`"),
        (json.dumps({"file_name": "missing.png", "text": "x"}), "does not exist"),
        (json.dumps({"file_name": "../escape.png", "text": "x"}), "points outside the folder"),
        (json.dumps({"file_name": "0000.png", "text": 3}), "`text` must be a string"),
    ],
)
def test_bad_metadata_lines(tmp_path, line, message):
    root = write_image_folder(tmp_path / "f", 1)
    (root / "metadata.jsonl").write_text(line + "\n")
    with pytest.raises(ConfigError, match=message):
        read_image_folder(root)


def test_empty_and_missing_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no images"):
        read_image_folder(tmp_path / "empty")
    with pytest.raises(ConfigError, match="does not exist"):
        read_image_folder(tmp_path / "nope")


def test_load_image_resizes_and_centre_crops(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((20, 40, 3), np.uint8)).save(tmp_path / "wide.png")
    assert load_image(tmp_path / "wide.png", 16).shape == (16, 16, 3)


def test_epoch_index_visits_every_item_once_per_epoch_and_is_reproducible():
    first = [epoch_index(p, 10, seed=3) for p in range(10)]
    second = [epoch_index(p, 10, seed=3) for p in range(10, 20)]
    assert sorted(first) == list(range(10)) and sorted(second) == list(range(10))
    assert first != second
    assert first == [epoch_index(p, 10, seed=3) for p in range(10)]
    assert first != [epoch_index(p, 10, seed=4) for p in range(10)]


def test_preprocessors_shapes_and_ranges():
    image = np.zeros((32, 32, 3), np.uint8)
    image[8:24, 8:24] = 200
    for name in PREPROCESSORS:
        pre = get_preprocessor(name)
        out = pre(image, np.random.default_rng(0))
        assert out.shape == (32, 32, 3) and out.dtype == np.float32
        lo, hi = pre.value_range
        assert out.min() >= lo and out.max() <= hi
    edges = get_preprocessor("canny")(image)
    assert edges[16, 7:9].max() == 1.0 and edges[16, 16].max() == 0.0  # edge on the border, none inside
    masked = get_preprocessor("inpaint")(image, np.random.default_rng(1))
    assert (masked == -1).any() and (masked >= 0).any()
    with pytest.raises(ConfigError, match="RGB uint8"):
        get_preprocessor("canny")(np.zeros((4, 4), np.uint8))


def test_controlnet_aux_preprocessor_reports_how_to_install():
    with pytest.raises(ConfigError) as err:
        get_preprocessor("aux:hed")
    assert "controlnet-aux" in str(err.value) or "annotators" in (err.value.hint or "")
    with pytest.raises(ConfigError, match="unknown controlnet-aux detector"):
        get_preprocessor("aux:nope")
