"""benchmarks/web_latency.py end to end on the tiny model's web folder: one interleaved round of browser (headless
Chromium, WASM) and native ONNX Runtime, FP32 and INT8, an `--also` folder, a `--teacher` folder and an A/B variant; the result file's
shape, and the README table rendered from it. Needs Chromium and web/node_modules, like test_web_browser.py."""

import json
import sys
from pathlib import Path

import pytest
from cdp import find_chromium

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

pytestmark = pytest.mark.skipif(find_chromium() is None, reason="needs Chromium: apt-get install -y chromium")


def test_web_latency_writes_result_and_table(
    web_export: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from benchmarks.web_latency import main

    assert web_export["code"] == 0, web_export["stdout"]
    web = str(web_export["web"])
    monkeypatch.chdir(tmp_path)  # write_result's default root is ./results
    args = [web, "--runs", "1", "--threads", "1", "--also", f"same={web}", "--compare", "dynamic=?fixed=0"]
    args += ["--teacher", web]  # the tiny model stands in for a teacher: a folder timed at its own sampling
    assert main([*args, "--results-name", "web/builtin-few-step", "--json", str(tmp_path / "m.json")]) == 0
    result = json.loads((tmp_path / "results" / "web" / "builtin-few-step.json").read_text())
    m = result["metrics"]
    assert (
        set(m["browser"])
        == set(m["native"])
        == set(m["browser_over_native"])
        == {"fp32", "int8", "int8 same", "fp32 teacher"}
    )
    for key, browser in m["browser"].items():
        native = m["native"][key]
        assert browser["n"] == native["n"] == 1 and browser["median_s"] > 0 and native["median_s"] > 0
        assert browser["iqr_s"] >= 0 and set(browser["graphs_ms"]) == {"text_encoder", "denoiser", "vae_decoder"}
        assert m["browser_over_native"][key] == pytest.approx(browser["median_s"] / native["median_s"])
        assert browser["identical"] or browser["psnr_db"] >= 40, browser
        assert native["identical_to_reference"] is True
        assert browser["backend"]["backend"] == "wasm" and browser["backend"]["simd"] is True
        assert browser["backend"]["threads"] == 1 and browser["backend"]["fixed_shapes"] is True
    assert m["browser"]["int8"]["quantized_weights"] > 0 and m["browser"]["int8"]["int8_op_types"] == [
        "Conv",
        "MatMul",
    ]
    assert m["webgpu"].startswith(("available", "not available"))
    assert m["noise_floor"]["factor"] >= 1
    variant = m["variants"]["dynamic"]
    assert variant["backend"]["fixed_shapes"] is False and variant["over_browser_same_precision"] > 0
    assert variant["identical"] or variant["psnr_db"] >= 40, variant
    assert isinstance(m["load_average_1min_start"], float)
    assert set(m["targets"]) >= {"best_browser_ms", "ms_met", "ratio_met"}
    sample = json.loads((web_export["web"] / "selftest" / "sample.json").read_text())
    assert result["config"]["runs"] == 1 and result["config"]["size"] == [sample["width"], sample["height"]]
    assert json.loads((tmp_path / "m.json").read_text())["metrics"]["browser"].keys() == m["browser"].keys()

    from refine_control.evaluation.web_tables import web_latency_table

    table = web_latency_table(tmp_path / "results")
    assert len(table.markdown.splitlines()) == 2 + 4  # header, rule, one row per case
    assert "WebGPU" in table.caption and "dynamic (" in table.caption and "The teacher row" in table.caption
    assert result["config"]["teacher"]["steps"] == sample["steps"]


def test_web_latency_refuses_a_folder_that_is_not_a_web_folder(tmp_path: Path, capsys) -> None:
    from benchmarks.web_latency import main

    assert main([str(tmp_path), "--runs", "1"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "not a refine-export --web folder" in err and "Traceback" not in err
