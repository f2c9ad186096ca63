"""The timing protocol's arithmetic (benchmarks/latency/stats.py) and how the markdown words a ratio against the
A-vs-A noise floor."""

import importlib
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def latency():
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    return importlib.import_module("benchmarks.latency.stats"), importlib.import_module("benchmarks.latency.markdown")


def test_summary_quartiles_by_hand(latency):
    stats, _ = latency
    out = stats.summarise([5.0, 1.0, 4.0, 2.0, 3.0])
    assert (out["median_s"], out["q1_s"], out["q3_s"], out["iqr_s"], out["n"]) == (3.0, 2.0, 4.0, 2.0, 5)
    assert out["p90_s"] == 5.0 and out["mean_s"] == 3.0
    assert out["samples_s"] == [5.0, 1.0, 4.0, 2.0, 3.0]  # in the order taken
    one = stats.summarise([0.5])
    assert one["q1_s"] == one["q3_s"] == 0.5 and one["iqr_s"] == 0.0
    with pytest.raises(ValueError, match="no timing samples"):
        stats.summarise([])


def _case(step_s: float, vae_s: float) -> dict:
    return {
        "denoiser": {"64": {"2": {"median_s": step_s}}},
        "text_encoder": {"2": {"median_s": 0.01}},
        "vae_decode": {"64": {"median_s": vae_s}},
    }


def test_noise_floor_is_the_worst_denoiser_ratio_either_way(latency):
    stats, _ = latency
    original, copy = _case(0.10, 0.050), _case(0.11, 0.040)
    original["denoiser"]["64"]["1"], copy["denoiser"]["64"]["1"] = {"median_s": 0.060}, {"median_s": 0.050}
    floor = stats.noise_floor(original, copy, "student", "ort-fp32")
    assert floor["ratios"]["denoiser 64 b2"] == pytest.approx(0.10 / 0.11)
    assert floor["ratios"]["text_encoder b2"] == 1.0 and floor["ratios"]["vae_decode 64"] == pytest.approx(1.25)
    # The VAE's 25% is listed but not counted; the worst denoiser ratio is 1.2 (batch 1).
    assert floor["counted"] == ["denoiser 64 b2", "denoiser 64 b1"]
    assert floor["factor"] == pytest.approx(1.2) and floor["percent"] == pytest.approx(20.0)
    assert stats.beyond(1.3, floor) and stats.beyond(1 / 1.3, floor)
    assert not stats.beyond(1.15, floor) and not stats.beyond(1 / 1.15, floor)
    assert not stats.beyond(5.0, None) and not stats.beyond(None, floor)
    components = stats.noise_floor({"vae_decode": {"64": {"median_s": 0.05}}}, _case(0.1, 0.04), "teacher", "pytorch")
    assert components["factor"] == pytest.approx(1.25)  # no denoiser: every measurement counts
    with pytest.raises(ValueError, match="no measurement"):
        stats.noise_floor({"denoiser": {}}, _case(0.1, 0.1), "a", "pytorch")


def test_ratios_are_claimed_only_beyond_the_floor(latency):
    _, markdown = latency
    floor = {"factor": 1.10, "percent": 10.0, "model": "student", "runtime": "ort-fp32"}
    assert markdown._x(1.25, floor) == "1.25×"
    assert markdown._x(1.05, floor) == "≈ 1 (1.05, noise)" and markdown._x(0.93, floor) == "≈ 1 (0.93, noise)"
    assert markdown._x(2.0, None) == "≈ 1 (2.00, noise)"  # no floor measured: nothing is claimed
    report = {
        "noise_floor": floor,
        "machine": {"load_warning": None},
        "config": {"steps": 20},
        "headline": {
            "fastest_image": {
                "model": "student", "runtime": "ort-fp32", "size": 64, "image_s": 0.2,
                "teacher_ort_fp32_over_model": 1.08,
            },
            "few_step": [
                {
                    "model": "fs", "runtime": "ort-fp32", "size": 64, "steps": 4, "image_s": 0.05, "vae_share": 0.3,
                    "teacher_over_model": 4.0, "target": 10.0,
                }
            ],
        },
    }  # fmt: skip
    lines = markdown.summary(report).splitlines()
    assert lines[0] == "A-vs-A noise floor: ±10.0%"
    assert "not faster than the teacher's in ORT FP32 beyond the noise floor (ratio 1.08)" in lines[1]
    assert "4.0× faster per image than the teacher's 20-step guided image" in lines[2]


def test_load_warning_above_half_a_core(latency, monkeypatch):
    stats, _ = latency
    monkeypatch.setattr(stats.os, "getloadavg", lambda: (3.0, 0.0, 0.0))
    load, warning = stats.load_check(4)
    assert load == 3.0 and "3.00 on 4 logical CPUs" in warning and "other work shares the cores" in warning
    assert stats.load_check(8) == (3.0, None)
