import math

import pytest

from refine_control.weaklabel.report import aggregate, markdown_table, mean_std, pivot


def test_mean_std_uses_the_sample_deviation_and_skips_nan():
    mean, std = mean_std([1.0, 2.0, 3.0, float("nan")])
    assert mean == pytest.approx(2.0) and std == pytest.approx(1.0)
    assert mean_std([5.0]) == (5.0, 0.0)
    assert all(math.isnan(v) for v in mean_std([]))


def test_aggregate_pivot_and_markdown():
    records = [
        {"mu": 0.1, "method": "cc", "acc": 0.8, "seed": 0},
        {"mu": 0.1, "method": "cc", "acc": 0.9, "seed": 1},
        {"mu": 0.1, "method": "rc", "acc": 0.7, "seed": 0},
    ]
    rows = aggregate(records, ["mu", "method"], ["acc"])
    assert rows[0]["acc"]["mean"] == pytest.approx(0.85) and rows[0]["acc"]["n"] == 2
    wide, cols = pivot(rows, ["mu"], "method", "acc")
    assert cols == ["mu", "cc", "rc"]
    table = markdown_table(wide, cols)
    lines = table.splitlines()
    assert lines[0].startswith("| mu") and len(lines) == 3
    assert "0.850 ± 0.071" in lines[2] and "0.700" in lines[2]
