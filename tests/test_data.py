import json

import numpy as np
import pytest
from tiny_models import write_image_folder

from refine_control.data.folders import epoch_index, load_image, read_image_folder
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


def _fake_fashion_mnist(root, n_train=12, n_test=6):
    """Idx files in the Debian package's layout: uint8 images and labels, gzipped."""
    import gzip

    rng = np.random.default_rng(0)
    root.mkdir()
    for part, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        with gzip.open(root / f"{part}-images-idx3-ubyte.gz", "wb") as f:
            f.write(b"\x00\x00\x08\x03" + b"".join(d.to_bytes(4, "big") for d in images.shape) + images.tobytes())
        with gzip.open(root / f"{part}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(b"\x00\x00\x08\x01" + n.to_bytes(4, "big") + labels.tobytes())


def test_fashion_mnist_becomes_a_captioned_image_folder(tmp_path, monkeypatch):
    from refine_control.data import fashion_mnist

    _fake_fashion_mnist(tmp_path / "idx")
    monkeypatch.setenv("REFINE_FASHION_MNIST_DIR", str(tmp_path / "idx"))
    monkeypatch.setattr(fashion_mnist, "OFFICIAL_TRAIN", 12)
    assert fashion_mnist.main(["--output-dir", str(tmp_path / "test"), "--split", "test", "--num-images", "6"]) == 0
    records = read_image_folder(tmp_path / "test")
    assert len(records) == 6 and all(r.text.startswith("a photo of a ") for r in records)
    assert load_image(records[0].path, 64).shape == (64, 64, 3)
    assert fashion_mnist.main(["--output-dir", str(tmp_path / "u"), "--num-images", "4", "--unlabelled"]) == 0
    assert all(r.text is None for r in read_image_folder(tmp_path / "u"))
    # More images than the split holds: a one-line error, exit code 2, nothing written.
    assert fashion_mnist.main(["--output-dir", str(tmp_path / "big"), "--split", "test", "--num-images", "7"]) == 2
    assert not (tmp_path / "big").exists()


def test_fashion_mnist_folders_from_one_seed_and_disjoint_ranges_share_no_image(tmp_path, monkeypatch):
    from refine_control.data import fashion_mnist

    _fake_fashion_mnist(tmp_path / "idx")
    monkeypatch.setenv("REFINE_FASHION_MNIST_DIR", str(tmp_path / "idx"))
    monkeypatch.setattr(fashion_mnist, "OFFICIAL_TRAIN", 12)
    write = fashion_mnist.write_fashion_folder
    pixels = {
        name: {
            load_image(r.path, 28).tobytes()
            for r in read_image_folder(write(tmp_path / name, "train", n, 28, 0, skip=k))
        }
        for name, n, k in (("small", 3, 0), ("large", 5, 0), ("unlabelled", 7, 5))
    }
    assert pixels["small"] < pixels["large"]  # nested labelled sets: the first N of one shuffled order
    assert not pixels["large"] & pixels["unlabelled"] and len(pixels["unlabelled"]) == 7
    assert fashion_mnist.main(["--output-dir", str(tmp_path / "x"), "--num-images", "8", "--skip", "5"]) == 2
    assert not (tmp_path / "x").exists()
