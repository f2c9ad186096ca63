"""benchmarks/latency.py runs on a tiny teacher and writes a valid report; no assertion is made on time."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "latency.py"


@pytest.fixture(scope="module")
def latency():
    spec = importlib.util.spec_from_file_location("latency_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_run_writes_json_markdown_and_plot(latency, tiny_pipeline_dir, tmp_path, monkeypatch):
    # Passive OpenMP waiting: active spinning of busy-waiting threads is very slow on a shared, loaded machine.
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    quality = tmp_path / "eval.json"
    quality.write_text(
        json.dumps({"target": "x", "metrics": {"edge_f1": 0.4}, "columns": {"teacher": {"edge_f1": 0.5}}})
    )
    out = tmp_path / "bench.json"
    args = ["--teacher", str(tiny_pipeline_dir), "--quick", "--presets", "compact-tiny", "--json", str(out)]
    args += ["--markdown", str(tmp_path / "bench.md"), "--quality", f"compact-tiny={quality}"]
    assert latency.main(args) == 0

    report = json.loads(out.read_text())
    assert set(report["models"]) == {"teacher", "compact-tiny"}
    assert report["peaks"]["fp32_gflops"] > 0 and report["peaks"]["int8_gops"] > 0
    assert report["machine"]["threads"] == 2 and report["machine"]["cpu"]
    size = str(report["config"]["sizes"][0])
    for info in report["models"].values():
        assert info["params"]["denoiser"] > 0 and info["macs"][size]["step"] > 0
        assert info["files"]["denoiser_fp32"]["mb"] > 0 and info["files"]["denoiser_int8"]["mb"] > 0
    assert report["models"]["compact-tiny"]["macs"][size]["step"] < report["models"]["teacher"]["macs"][size]["step"]
    cases = {(c["model"], c["runtime"]): c for c in report["cases"]}
    assert set(cases) == {(m, r) for m in report["models"] for r in latency.RUNTIMES}
    for case in cases.values():
        row = case["sizes"][size]
        assert 0 < row["step"]["median_s"] <= row["step"]["p90_s"]
        assert row["step_cfg"]["n"] == 2 and case["peak_rss_mb"] > 0
    assert set(report["components"]["teacher"]) == {"pytorch", "ort-fp32"}
    assert len(report["per_image"]) == 6 and all(r["image_cfg_s"] > 0 for r in report["per_image"])
    assert {r["model"] for r in report["ratios"]} == {"teacher", "compact-tiny"}
    assert report["headline"]["fewest_macs"]["model"] == "compact-tiny"
    assert {p["model"] for p in report["quality"]["points"]} == {"teacher", "compact-tiny"}

    table = (tmp_path / "bench.md").read_text()
    assert "| compact-tiny |" in table and "ort-int8" in table and "Ratios" in table
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--presets", "nope"], "unknown student preset"),
        (["--run", "no-equals-sign"], "expected NAME=DIR"),
        (["--size", "18"], "multiples of"),
        (["--runtimes", "tensorrt"], "--runtimes"),
        (["--int8-ops", "Softmax"], "--int8-ops"),
        (["--quality", "missing.json", "--json", "x.json"], "no such file"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(latency, tiny_pipeline_dir, capsys, extra, message):
    assert latency.main(["--teacher", str(tiny_pipeline_dir), "--quick", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_headline_of_an_ort_only_run_has_no_pytorch_ratio(latency):
    """`make demo` times ORT FP32 only: the summary must not need a PyTorch case."""
    ratio = {"model": "student", "size": 64, "macs_teacher_over_model": 4.0}
    report = {
        "ratios": [{**ratio, "teacher_pytorch_over_model_fastest": None, "pytorch_over_ort_int8": None}],
        "cases": [],
    }
    headline = latency.headline(report)
    assert "fastest_vs_teacher_pytorch" not in headline
    assert latency.summary({"headline": headline}) == "fewest MACs: student at 64², 4.00× fewer than the teacher"
