import pytest
import torch
from torch import nn

from refine_control.models.transfer import transfer_parameters
from refine_control.weaklabel.transfer_experiment import TransferSettings, run_synthetic
from refine_control.weaklabel.transfer_model import (
    GDConfig,
    TwoLayerReLUCNN,
    make_directions,
    sample_task,
    sign_accuracy,
    train_gd,
)


class Net(nn.Module):
    def __init__(self, width: int, extra: bool = False) -> None:
        super().__init__()
        self.a = nn.Linear(4, width)
        self.b = nn.Linear(width, 2)
        if extra:
            self.c = nn.Linear(2, 2)


def test_report_lists_copied_sliced_skipped_missing():
    src, dst = Net(8), Net(4, extra=True)
    report = transfer_parameters(src, dst)
    assert report.copied == ["b.bias"]
    assert report.sliced == ["a.weight", "a.bias", "b.weight"]
    assert report.missing == ["c.weight", "c.bias"] and report.skipped == []
    assert torch.equal(dst.a.weight, src.a.weight[:4]) and torch.equal(dst.b.weight, src.b.weight[:, :4])
    assert report.elements_total == 4 * 4 + 4 + 2 * 4 + 2 + 4 + 2
    assert report.fraction_copied == pytest.approx((16 + 4 + 8 + 2) / report.elements_total)
    wider = transfer_parameters(Net(4), Net(8))
    assert wider.skipped == ["a.weight", "a.bias", "b.weight"] and wider.copied == ["b.bias"]
    assert "3 skipped" in wider.summary()


def test_exact_fraction_inherits_round_alpha_m_filters():
    up = TwoLayerReLUCNN(6, 8, 1.0, torch.Generator().manual_seed(0))
    down = TwoLayerReLUCNN(6, 8, 1.0, torch.Generator().manual_seed(1))
    before = down.w_pos.detach().clone()
    report = transfer_parameters(up, down, fraction=0.25, generator=torch.Generator().manual_seed(2), exact=True)
    same = (down.w_pos == up.w_pos).all(1)
    assert int(same.sum()) == 2 and bool(((down.w_pos == before).all(1) | same).all())
    assert report.elements_copied == 2 * 2 * 6
    untouched = TwoLayerReLUCNN(6, 8, 1.0, torch.Generator().manual_seed(1))
    transfer_parameters(up, untouched, fraction=0.0, exact=True)
    assert torch.equal(untouched.w_pos, before)


def test_data_model_noise_is_orthogonal_to_the_signals():
    g = torch.Generator().manual_seed(0)
    dirs = make_directions(50, shared=2.0, upstream=3.0, downstream=1.0, generator=g)
    assert dirs.u.norm().item() == pytest.approx(2.0) and abs(float(dirs.u @ dirs.v1)) < 1e-5
    x, y, y_clean = sample_task(200, dirs.u, dirs.v1, noise_std=1.0, generator=g)
    assert x.shape == (200, 2, 50) and torch.equal(y, y_clean)
    assert torch.allclose(x[:, 0], y[:, None] * (dirs.u + dirs.v1)[None])
    assert float((x[:, 1] @ dirs.u).abs().max()) < 1e-4 and float((x[:, 1] @ dirs.v1).abs().max()) < 1e-4


def test_two_layer_cnn_forward_by_hand_and_learns_a_strong_signal():
    net = TwoLayerReLUCNN(2, 2, 0.0)
    with torch.no_grad():
        net.w_pos.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        net.w_neg.copy_(torch.tensor([[-1.0, 0.0], [0.0, 0.0]]))
    x = torch.tensor([[[2.0, -1.0], [0.5, 3.0]]])  # patches (2, −1) and (0.5, 3)
    # F+ = (relu(2)+relu(.5) + relu(−1)+relu(3)) / 2 = 2.75; F− = (relu(−2)+relu(−.5) + 0) / 2 = 0
    assert net(x).item() == pytest.approx(2.75)
    g = torch.Generator().manual_seed(0)
    dirs = make_directions(100, shared=3.0, upstream=1.0, downstream=1.0, generator=g)
    x, y, _ = sample_task(30, dirs.u, dirs.v2, noise_std=1.0, generator=g)
    xt, _, yt = sample_task(300, dirs.u, dirs.v2, noise_std=1.0, generator=g)
    model = TwoLayerReLUCNN(100, 5, 0.01, g)
    train_gd(model, x, y, GDConfig(lr=0.1, steps=100))
    assert sign_accuracy(model, xt, yt) > 0.9


def test_synthetic_job_is_paired_across_upstream_sizes():
    s = TransferSettings(
        alphas=(0.0, 0.5, 1.0), n_upstream=(30, 60), n_downstream=(5, 10), dim=100, filters=4, n_test=100,
        gd=GDConfig(steps=20),
    )  # fmt: skip
    runs = run_synthetic(0, 1.0, s)
    assert [r.config["n_upstream"] for r in runs] == [30, 60]
    assert [r.name for r in runs] == ["synthetic_u1_n1-30_s0", "synthetic_u1_n1-60_s0"]
    a, b = (r.metrics["test_acc"] for r in runs)
    assert set(a) == {"5", "10"} and set(a["5"]) == {"0", "0.5", "1"}
    # α = 0 is the same scratch model (same downstream data, init and GD) whatever N₁ is
    assert a["5"]["0"] == b["5"]["0"] and a["10"]["0"] == b["10"]["0"]
    assert runs[0].metrics["inherited"] == {"0": 0.0, "0.5": 0.5, "1": 1.0}
    assert runs[0].config["pretraining_on_target"] is False


def test_real_data_marks_blend_1_as_pretraining_on_the_target():
    from refine_control.weaklabel.datasets import load_dataset
    from refine_control.weaklabel.transfer_experiment import run_real

    ds = load_dataset("synthetic", seed=0, max_samples=600)  # stands in for digits (classes 4, 9, 0, 1 are used)
    s = TransferSettings(alphas=(0.0, 1.0), n_upstream=(20,), n_downstream=(5,), filters=2, gd=GDConfig(steps=5))
    [one] = run_real("digits", 0, 1.0, s, ds)
    [half] = run_real("digits", 0, 0.5, s, ds)
    assert one.config["pretraining_on_target"] is True and half.config["pretraining_on_target"] is False
    assert one.metrics["test_acc"]["5"]["0"] == half.metrics["test_acc"]["5"]["0"]  # same downstream task


@pytest.mark.parametrize(
    ("points", "expected"),
    [
        ([(0.0, -0.2), (1.0, -0.1), (2.0, 0.1)], 1.5),  # crosses between 1 and 2: 1 + 0.1/0.2
        ([(0.0, -0.1), (0.5, 0.1), (1.0, -0.1), (2.0, 0.3)], 1.25),  # the last sign change counts
        ([(0.0, 0.1), (1.0, 0.2)], None),  # never negative
        ([(0.0, -0.1), (1.0, -0.2)], None),  # never crosses
    ],
)
def test_zero_crossing_by_hand(points, expected):
    from refine_control.weaklabel.report import zero_crossing

    got = zero_crossing(points)
    assert got == (pytest.approx(expected) if expected is not None else None)
