import gzip
import pickle

import numpy as np
import pytest
import torch

from refine_control.errors import ConfigError
from refine_control.weaklabel.datasets import load_dataset, split_4_1_1
from refine_control.weaklabel.safe_pickle import load_numpy_pickle


def _write_idx(path, array: np.ndarray) -> None:
    header = b"\x00\x00\x08" + bytes([array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_split_is_4_1_1_per_class_and_disjoint():
    x = np.arange(120, dtype=np.float32).reshape(120, 1, 1)
    y = np.repeat(np.arange(4), 30)
    train, val, test = split_4_1_1(x, y, np.random.default_rng(0))
    assert (len(train), len(val), len(test)) == (80, 20, 20)
    for part in (train, val, test):
        assert torch.bincount(part.y, minlength=4).tolist() == [len(part) // 4] * 4
    ids = torch.cat([train.x, val.x, test.x]).flatten().tolist()
    assert sorted(ids) == list(range(120))


def test_synthetic_loader_shapes_and_seed_determinism():
    a = load_dataset("synthetic", seed=3, max_samples=300)
    b = load_dataset("synthetic", seed=3, max_samples=300)
    assert a.image_shape == (1, 8, 8) and a.num_classes == 10
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    assert a.train.x.min() >= 0.0 and a.train.x.max() <= 1.0


def test_fashion_mnist_reads_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    written = {}
    for part, n in (("train", 48), ("t10k", 12)):
        images, labels = rng.integers(0, 256, (n, 28, 28)), np.arange(n) % 10
        _write_idx(tmp_path / f"{part}-images-idx3-ubyte.gz", images)
        _write_idx(tmp_path / f"{part}-labels-idx1-ubyte.gz", labels)
        written |= {image.astype(np.uint8).tobytes(): int(label) for image, label in zip(images, labels, strict=True)}
    ds = load_dataset("fashion-mnist", seed=0, fashion_mnist_dir=tmp_path)
    assert ds.image_shape == (1, 28, 28)
    # Every written image comes back once, as its bytes / 255, with its own label.
    seen = []
    for split in (ds.train, ds.val, ds.test):
        for x, y in zip(split.x, split.y, strict=True):
            raw = (x[0].numpy() * 255).round().astype(np.uint8)
            np.testing.assert_allclose(x[0].numpy(), raw / 255.0, rtol=0, atol=1e-7)
            assert written[raw.tobytes()] == int(y)
            seen.append(raw.tobytes())
    assert sorted(seen) == sorted(written)


def test_missing_fashion_mnist_names_the_install_command(tmp_path):
    with pytest.raises(ConfigError, match="Fashion-MNIST not found") as err:
        load_dataset("fashion-mnist", fashion_mnist_dir=tmp_path)
    assert "apt-get install dataset-fashion-mnist" in err.value.hint


def test_unknown_dataset_is_a_config_error():
    with pytest.raises(ConfigError, match="choose one of"):
        load_dataset("cifar10")


def test_numpy_only_unpickler_round_trips_arrays_and_refuses_other_globals():
    arrays = ((np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2], dtype=np.int64)),)
    loaded = load_numpy_pickle(gzip.decompress(gzip.compress(pickle.dumps(arrays, protocol=4))))
    assert np.array_equal(loaded[0][0], arrays[0][0]) and loaded[0][1].dtype == np.int64
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_numpy_pickle(pickle.dumps(print))
    with pytest.raises(pickle.UnpicklingError):
        load_numpy_pickle(pickle.dumps(np.array([object()], dtype=object)))


def test_test_samples_come_from_outside_the_training_subset():
    ds = load_dataset("synthetic", seed=1, max_samples=300, test_samples=500)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (240, 60, 500)
    assert torch.bincount(ds.test.y, minlength=10).tolist() == [50] * 10
    seen = {tuple(v.flatten().tolist()) for v in torch.cat([ds.train.x, ds.val.x])}
    assert not any(tuple(v.flatten().tolist()) in seen for v in ds.test.x)


def test_too_small_a_pool_for_the_test_set_is_an_error(tmp_path):
    for part, n in (("train", 48), ("t10k", 12)):
        _write_idx(tmp_path / f"{part}-images-idx3-ubyte.gz", np.zeros((n, 28, 28)))
        _write_idx(tmp_path / f"{part}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    with pytest.raises(ConfigError, match="only 30 images left for a test set of 40"):
        load_dataset("fashion-mnist", seed=0, max_samples=30, test_samples=40, fashion_mnist_dir=tmp_path)


def test_downsample_averages_2x2_blocks():
    full = load_dataset("synthetic", seed=2, max_samples=200)
    half = load_dataset("synthetic", seed=2, max_samples=200, downsample=2)
    assert half.image_shape == (1, 4, 4) and torch.equal(half.train.y, full.train.y)
    block = full.train.x[0, 0, 2:4, 4:6]
    assert half.train.x[0, 0, 1, 2].item() == pytest.approx(block.mean().item())
