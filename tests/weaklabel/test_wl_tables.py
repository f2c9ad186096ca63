"""The weak-label tables render hand-checkable numbers from result files (refine_control.weaklabel.tables)."""

import pytest

from refine_control.results import ResultsError, write_result
from refine_control.weaklabel import tables as wt
from refine_control.weaklabel import transfer_tables as tt


def _upllrs(root, name, seed, method, acc, val, gamma=None, **metrics):
    config = {"experiment": "upllrs", "dataset": "fm", "eta": 0.3, "mu": 0.5, "method": method}
    if method == "upllrs":
        config |= {"gamma": gamma, "stop_rule": "restore"}
    write_result(
        ("weaklabel/upllrs", f"{name}_s{seed}"), metrics={"test_acc": acc, "best_val_acc": val, "unreliable_rate": 0.35, **metrics},
        config=config, seed=seed, command="c", wall_s=60, root=root, commit=("deadbeef", False), machine={},
    )  # fmt: skip


@pytest.fixture
def upllrs_root(tmp_path):
    sep = {
        "removed_fraction": 0.1,
        "steps": 7,
        "precision_removed": 0.8,
        "unreliable_left": 0.3,
        "fixmatch_mask_rate": 0.05,
    }
    for seed, (cc, proden, rc, up) in enumerate([(0.71, 0.70, 0.65, 0.74), (0.69, 0.72, 0.66, 0.71)]):
        vals = {"cc": (0.70, 0.69)[seed], "proden": (0.69, 0.71)[seed], "rc": 0.6}
        _upllrs(tmp_path, "cc", seed, "cc", cc, vals["cc"])
        _upllrs(tmp_path, "proden", seed, "proden", proden, vals["proden"])
        _upllrs(tmp_path, "rc", seed, "rc", rc, vals["rc"])
        _upllrs(tmp_path, "up", seed, "upllrs", up, 0.7, gamma=0.01, **{**sep, "removed_fraction": (0.0, 0.125)[seed]})
    return tmp_path


def test_upllrs_accuracy_cells(upllrs_root):
    text = wt.upllrs_accuracy(upllrs_root).markdown
    header, _, row = text.splitlines()
    assert header == "| data | μ | unreliable rate | CC | PRODEN | RC | UPLLRS γ=0.01 |"
    # CC (0.71, 0.69) → 0.700 ± 0.014; UPLLRS (0.74, 0.71) → 0.725 ± 0.021
    assert row == "| fm | 0.5 | 0.350 ± 0.000 | 0.700 ± 0.014 | 0.710 ± 0.014 | 0.655 ± 0.007 | 0.725 ± 0.021 |"


def test_upllrs_gain_uses_the_validation_chosen_baseline(upllrs_root):
    row = wt.upllrs_gain(upllrs_root).markdown.splitlines()[2]
    # seed 0: CC has the best val (0.70) → 0.74 − 0.71 = +0.03; seed 1: PRODEN (0.71) → 0.71 − 0.72 = −0.01
    # mean +0.010, sample std 0.028; vs PRODEN: +0.04, −0.01 → +0.015 ± 0.035
    assert row == "| fm | 0.5 | UPLLRS γ=0.01 | +0.010 ± 0.028 | 1/2 | +0.015 ± 0.035 | 1/2 |"


def test_upllrs_separation_lists_removed_fraction_per_seed(upllrs_root):
    row = wt.upllrs_separation(upllrs_root).markdown.splitlines()[2]
    assert row.startswith("| fm | 0.5 | UPLLRS γ=0.01 | 0.000, 0.125 | 7, 7 | 0.80 ± 0.00 |")


def test_transfer_contour_and_crossing(tmp_path):
    # two seeds, two strengths, one N1: gains at α=1 (N2=20) are −0.1/−0.2 at u=0 and +0.1/+0.1 at u=1
    for seed, (g0, g1) in enumerate([(-0.1, 0.1), (-0.2, 0.1)]):
        for u, g in ((0.0, g0), (1.0, g1)):
            write_result(
                ("weaklabel/transfer", f"synthetic_u{u:g}_n1-100_s{seed}"),
                metrics={"test_acc": {"20": {"0": 0.7, "1": 0.7 + g}}, "inherited": {}},
                config={"dataset": "synthetic", "strength": u, "n_upstream": 100}, seed=seed, command="c",
                wall_s=1, root=tmp_path, commit=("deadbeef", False), machine={},
            )  # fmt: skip
    lines = tt._contour("synthetic", 20, 1.0)(tmp_path).markdown.splitlines()
    assert lines[0] == "| ‖u‖ \\ N₁ | 100 |"
    assert lines[2] == "| 0 | -0.150 ± 0.071 |" and lines[3] == "| 1 | +0.100 ± 0.000 |"
    assert lines[4] == "| **gain = 0 at** | 0.60 |"  # 0 + 0.15 / 0.25


def _transfer_file(root, ds, u, n1, seed):
    write_result(
        ("weaklabel/transfer", f"{ds}_u{u:g}_n1-{n1}_s{seed}"),
        metrics={"test_acc": {"20": {"0": 0.7, "1": 0.8}}, "inherited": {}},
        config={"dataset": ds, "strength": u, "n_upstream": n1}, seed=seed, command="c",
        wall_s=1, root=root, commit=("deadbeef", False), machine={},
    )  # fmt: skip


def test_transfer_coverage_lists_seeds_with_every_n1(tmp_path):
    for seed in (0, 1):
        _transfer_file(tmp_path, "synthetic", 0.0, 100, seed)
    _transfer_file(tmp_path, "synthetic", 0.0, 300, 0)  # seed 1 lacks N1 = 300
    lines = tt.transfer_coverage(tmp_path).markdown.splitlines()
    assert lines[2] == "| synthetic | 0 | 100, 300 | 0 | 3 |"


def test_transfer_tables_refuse_a_dataset_without_runs(tmp_path):
    _transfer_file(tmp_path, "synthetic", 0.0, 100, 0)
    with pytest.raises(ResultsError, match="fashion-mnist"):
        tt._contour("fashion-mnist", 20, 1.0)(tmp_path)
    with pytest.raises(ResultsError, match="fashion-mnist"):
        tt._by_n2("fashion-mnist", 100, 1.0)(tmp_path)


def test_headline_names_an_experiment_without_result_files(tmp_path):
    _transfer_file(tmp_path, "synthetic", 0.0, 100, 0)
    rows = wt.headline(tmp_path).markdown.splitlines()[2:]
    assert len(rows) == 4
    assert rows[1].startswith("| Biased soft labels") and "not run: no result files (untested)" in rows[1]
    assert rows[3].startswith("| Parameter transfer") and "+0.100" in rows[3]
