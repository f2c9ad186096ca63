import numpy as np
import torch

from refine_control.builtin.shapes import COLOURS, sample_specs
from refine_control.evaluation.evaluate import domain_fid_kid
from refine_control.evaluation.oracle import (
    SHAPE_TASKS,
    FeatureNet,
    load_net,
    predict,
    save_net,
    spec_labels,
    train_feature_net,
    train_folder_net,
)


def _flat(colour: tuple[int, int, int], n: int, size: int = 32) -> np.ndarray:
    return np.broadcast_to(np.asarray(colour, np.uint8), (n, size, size, 3)).copy()


def test_feature_net_shapes_and_cache_round_trip(tmp_path):
    torch.manual_seed(0)
    net = FeatureNet(SHAPE_TASKS).eval()
    images = torch.rand(2, 3, 64, 64)
    assert net(images).shape == (2, net.num_features)
    assert {k: v.shape for k, v in net.logits(images).items()} == {k: (2, n) for k, n in SHAPE_TASKS.items()}
    path = tmp_path / "oracle.safetensors"
    save_net(net, path)
    again = load_net(path, SHAPE_TASKS)
    assert again is not None
    torch.testing.assert_close(again(images), net(images))
    assert load_net(path, {"caption": 3}) is None  # other tasks: not reused
    assert load_net(tmp_path / "missing.safetensors", SHAPE_TASKS) is None


def test_spec_labels_index_the_factor_lists():
    specs = sample_specs("test", 5, 0)
    labels = spec_labels(specs)
    assert [list(COLOURS)[i] for i in labels["colour"]] == [s.colour for s in specs]


def test_feature_net_learns_an_easy_task():
    colours = [(220, 30, 30), (30, 30, 220)]

    def sample(rng, n):
        labels = rng.integers(0, 2, n)
        return np.stack([_flat(colours[k], 1)[0] for k in labels]), {"colour": labels}

    net = train_feature_net({"colour": 2}, sample, steps=30, seed=0, batch_size=16)
    images = np.concatenate([_flat(colours[0], 4), _flat(colours[1], 4)])
    assert predict(net, images)["colour"].tolist() == [0] * 4 + [1] * 4


def test_folder_net_uses_captions_as_classes_or_rotation():
    images = np.random.default_rng(0).integers(0, 255, (16, 16, 16, 3), dtype=np.uint8)
    assert train_folder_net(images, ["a"] * 8 + ["b"] * 8, seed=0, steps=2).tasks == {"caption": 2}
    assert train_folder_net(images, [f"c{i}" for i in range(16)], seed=0, steps=2).tasks == {"rotation": 4}


def test_domain_fid_is_small_for_the_same_set_and_large_for_another():
    torch.manual_seed(0)
    net = FeatureNet({"x": 2}).eval()
    rng = np.random.default_rng(0)
    real = rng.integers(0, 255, (64, 32, 32, 3), dtype=np.uint8)
    same_fid, same_kid = domain_fid_kid(net, real, real, seed=0)
    other_fid, other_kid = domain_fid_kid(net, real, _flat((200, 40, 40), 64), seed=0)
    assert abs(same_fid) < 1e-3 and abs(same_kid) < 1e-3
    assert other_fid > 100 * max(same_fid, 1e-3) and other_kid > same_kid
