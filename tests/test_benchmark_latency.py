"""benchmarks/latency/ on a tiny teacher, a preset and a trained few-step run (one quick benchmark run shared by the
tests): valid JSON, markdown and result file, and per-image figures that match a hand computation from the timed
parts. No assertion is made on time itself."""

import contextlib
import importlib
import importlib.util
import io
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
QUICK_STEPS = 2  # --quick: the teacher's and ordinary students' steps per image
FEW_STEPS = 3  # the few-step run's recommended steps (--sampling-steps), different from QUICK_STEPS on purpose


@pytest.fixture(scope="module")
def cli():
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    return importlib.import_module("benchmarks.latency.cli")


@pytest.fixture(scope="module")
def few_step_run(tiny_run_dir, tmp_path_factory):
    from refine_control.cli import main as distill

    out = tmp_path_factory.mktemp("few-step") / "fs"
    args = ["--from", str(tiny_run_dir), "--few-step", "-o", str(out), "--max-steps", "2"]
    assert distill([*args, "--sampling-steps", str(FEW_STEPS), "--batch-size", "2", "-q"]) == 0
    return out


@pytest.fixture(scope="module")
def bench(cli, tiny_pipeline_dir, few_step_run, tmp_path_factory):
    """One quick run: teacher (PyTorch; its text encoder and VAE in ORT too), compact-tiny (PyTorch), the few-step
    run (every runtime: its denoiser is the only one exported, which keeps the test fast)."""
    tmp = tmp_path_factory.mktemp("bench")
    quality = tmp / "eval.json"
    quality.write_text(
        json.dumps({"target": "x", "metrics": {"edge_f1": 0.4}, "columns": {"teacher": {"edge_f1": 0.5}}})
    )
    args = ["--teacher", str(tiny_pipeline_dir), "--quick", "--presets", "compact-tiny", "--run", f"fs={few_step_run}"]
    args += ["--ort-models", "fs", "--quality", f"compact-tiny={quality}", "--json", str(tmp / "bench.json")]
    args += [
        "--markdown",
        str(tmp / "bench.md"),
        "--results-name",
        "latency/test",
        "--results-dir",
        str(tmp / "results"),
    ]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = cli.main(args)
    assert code == 0, stdout.getvalue()
    return tmp, json.loads((tmp / "bench.json").read_text()), stdout.getvalue()


def _case(report, model, runtime):
    (case,) = [c for c in report["cases"] if c["model"] == model and c["runtime"] == runtime]
    return case


def _image(report, model, runtime):
    (row,) = [r for r in report["per_image"] if r["model"] == model and r["runtime"] == runtime]
    return row


def test_report_json_markdown_and_result_file(bench):
    tmp, report, stdout = bench
    assert set(report["models"]) == {"teacher", "compact-tiny", "fs"}
    assert report["peaks"]["fp32_gflops"] > 0 and report["peaks"]["int8_gops"] > 0
    assert report["machine"]["threads"] == 2 and report["machine"]["cpu"]
    size = str(report["config"]["sizes"][0])
    teacher, preset = report["models"]["teacher"], report["models"]["compact-tiny"]
    assert preset["macs"][size]["step"] < teacher["macs"][size]["step"]
    # ONNX files written by the project's exporter and quantiser: every graph of the run, the teacher's text encoder
    # and VAE decoder (its denoiser is not in --ort-models), nothing for the preset (it uses the teacher's).
    files = {name: info["files"] for name, info in report["models"].items()}
    assert set(files["fs"]) == {"denoiser", "denoiser_int8", "text_encoder", "vae_decoder"}
    assert set(files["teacher"]) == {"text_encoder", "vae_decoder"} and files["compact-tiny"] == {}
    assert all(f["mb"] > 0 for model in files.values() for f in model.values())
    assert "not in --ort-models" in _case(report, "compact-tiny", "ort-fp32")["skipped"]
    assert "not in --ort-models" in _case(report, "teacher", "ort-int8")["skipped"]
    row = _case(report, "teacher", "pytorch")["denoiser"][size]
    assert set(row) == {"1", "2"} and row["2"]["n"] == 2 and row["2"]["median_s"] <= row["2"]["p90_s"]
    # The text encoder and VAE run in PyTorch and ORT FP32 only: `refine-export --int8` ships them in FP32.
    assert {"text_encoder", "vae_decode"} <= set(_case(report, "teacher", "ort-fp32"))
    assert "vae_decode" not in _case(report, "fs", "ort-int8")

    table = (tmp / "bench.md").read_text()
    assert "| compact-tiny |" in table and "| fs | " in table and "3 × 1" in table and "Per image" in table
    result = json.loads((tmp / "results" / "latency" / "test.json").read_text())
    assert (result["group"], result["name"], result["seed"]) == ("latency", "test", 0)
    assert result["command"].startswith("python benchmarks/latency.py --teacher") and result["wall_s"] > 0
    assert result["metrics"]["per_image"] == report["per_image"] and result["config"]["sizes"] == [int(size)]
    if importlib.util.find_spec("matplotlib") is None:
        assert "plot skipped: matplotlib is not installed" in stdout and ".[plot]" in stdout
        assert not (tmp / "bench.png").exists()
    else:
        assert (tmp / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_per_image_matches_a_hand_computation(bench):
    """Teacher: text encoder at batch 2 + 2 CFG steps at batch 2 + one decode. A preset: its own step, the teacher's
    text encoder and VAE. ORT INT8: the INT8 step with the run's ORT FP32 text encoder and VAE."""
    _, report, _ = bench
    size = str(report["config"]["sizes"][0])

    def median(case, *keys):
        for key in keys:
            case = case[key]
        return case["median_s"]

    parts = _case(report, "teacher", "pytorch")
    te, vae = median(parts, "text_encoder", "2"), median(parts, "vae_decode", size)
    step = median(parts, "denoiser", size, "2")
    assert _image(report, "teacher", "pytorch")["image_s"] == pytest.approx(te + 2 * step + vae, rel=1e-12)
    preset_step = median(_case(report, "compact-tiny", "pytorch"), "denoiser", size, "2")
    expected = median(parts, "text_encoder", "2") + 2 * preset_step + median(parts, "vae_decode", size)
    assert _image(report, "compact-tiny", "pytorch")["image_s"] == pytest.approx(expected, rel=1e-12)
    fp32 = _case(report, "fs", "ort-fp32")
    int8_step = median(_case(report, "fs", "ort-int8"), "denoiser", size, "1")
    expected = median(fp32, "text_encoder", "1") + 3 * int8_step + median(fp32, "vae_decode", size)
    assert _image(report, "fs", "ort-int8")["image_s"] == pytest.approx(expected, rel=1e-12)
    # MACs per image: text encoder ×2, 2 steps ×2, one decode.
    macs = report["models"]["teacher"]["macs"][size]
    gmacs = (2 * macs["text_encoder"] + 4 * macs["step"] + macs["vae_decode"]) / 1e9
    assert _image(report, "teacher", "pytorch")["gmacs_image"] == pytest.approx(gmacs)


def test_few_step_run_is_timed_at_batch_1_with_its_recommended_steps(bench):
    _, report, _ = bench
    size = str(report["config"]["sizes"][0])
    fs = report["models"]["fs"]
    assert fs["geometry"]["guidance_embedding_dim"] is not None  # the denoiser takes a 6th input, guidance_scale
    assert fs["sampling"] == {"steps": FEW_STEPS, "batch": 1, "guidance_scale": 3.0, "guidance": "embedded"}
    for runtime in ("pytorch", "ort-fp32", "ort-int8"):
        case = _case(report, "fs", runtime)
        assert set(case["denoiser"][size]) == {"1"}  # one pass per step, no guidance pair
    own = _case(report, "fs", "ort-fp32")  # its own text encoder (batch 1) and VAE decoder
    assert set(own["text_encoder"]) == {"1"}
    te, vae = own["text_encoder"]["1"]["median_s"], own["vae_decode"][size]["median_s"]
    step = own["denoiser"][size]["1"]["median_s"]
    image = te + FEW_STEPS * step + vae
    row = _image(report, "fs", "ort-fp32")
    assert (row["steps"], row["batch"]) == (FEW_STEPS, 1)
    assert row["image_s"] == pytest.approx(image, rel=1e-12)
    assert row["vae_share"] == pytest.approx(vae / image, rel=1e-12)
    # Teacher ÷ student per image, in PyTorch (the teacher's denoiser is not exported in this test).
    teacher, own = _case(report, "teacher", "pytorch"), _case(report, "fs", "pytorch")
    teacher_image = (
        teacher["text_encoder"]["2"]["median_s"]
        + QUICK_STEPS * teacher["denoiser"][size]["2"]["median_s"]
        + teacher["vae_decode"][size]["median_s"]
    )
    image = own["text_encoder"]["1"]["median_s"] + FEW_STEPS * own["denoiser"][size]["1"]["median_s"]
    image += own["vae_decode"][size]["median_s"]
    assert _image(report, "fs", "pytorch")["teacher_over_model"] == pytest.approx(teacher_image / image, rel=1e-12)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--presets", "nope"], "unknown student preset"),
        (["--run", "no-equals-sign"], "expected NAME=DIR"),
        (["--size", "18"], "multiples of"),
        (["--runtimes", "tensorrt"], "--runtimes"),
        (["--int8-ops", "Softmax"], "--int8-ops"),
        (["--quality", "missing.json", "--json", "x.json"], "no such file"),
        (["--results-name", "no-group"], "--results-name"),
        (["--few-step-steps", "0"], "--few-step-steps"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(cli, tiny_pipeline_dir, capsys, extra, message):
    assert cli.main(["--teacher", str(tiny_pipeline_dir), "--quick", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_cases_are_timed_round_robin_with_an_a_vs_a_noise_floor(bench):
    """Every case's round r starts before any case's round r + 1 (one clock for all processes); the last model's
    first case with a denoiser (fs, PyTorch) is also timed as a second case, and the floor is their worst median
    ratio."""
    tmp, report, stdout = bench
    timed = [c for c in report["cases"] if "round_starts_s" in c]
    assert len(timed) >= 4
    rounds = report["config"]["repeats"]
    assert all(len(c["round_starts_s"]) == rounds for c in timed)
    for r in range(rounds - 1):
        assert max(c["round_starts_s"][r] for c in timed) < min(c["round_starts_s"][r + 1] for c in timed)
    floor = report["noise_floor"]
    assert (floor["model"], floor["runtime"]) == ("fs", "pytorch")
    original = _case(report, "fs", "pytorch")
    size = str(report["config"]["sizes"][0])
    a, b = original["denoiser"][size]["1"], floor["copy"]["denoiser"][size]["1"]
    assert floor["ratios"][f"denoiser {size} b1"] == pytest.approx(a["median_s"] / b["median_s"])
    assert floor["counted"] == [f"denoiser {size} b1"]
    assert floor["factor"] == pytest.approx(max(a["median_s"] / b["median_s"], b["median_s"] / a["median_s"]))
    assert floor["copy"]["round_starts_s"][0] > original["round_starts_s"][0]  # its own process, later in the round
    # Quartiles and IQR of every timing; the per-image spread from the parts summed round by round.
    assert a["q1_s"] <= a["median_s"] <= a["q3_s"] and a["iqr_s"] == pytest.approx(a["q3_s"] - a["q1_s"])
    assert len(a["samples_s"]) == rounds
    row = _image(report, "fs", "ort-fp32")
    assert row["image_q1_s"] <= row["image_q3_s"] and row["image_iqr_s"] >= 0
    assert isinstance(row["teacher_over_model_beyond_noise"], bool)
    assert isinstance(report["machine"]["load_average_1min"], float)
    table = (tmp / "bench.md").read_text()
    assert "A-vs-A noise floor ±" in table and "1-min load average at start" in table and "interleaved" in table
    assert "A-vs-A noise floor" in stdout
    result = json.loads((tmp / "results" / "latency" / "test.json").read_text())
    assert result["metrics"]["noise_floor"]["factor"] == floor["factor"]


def test_sequential_schedule_times_one_case_after_another(cli, tiny_pipeline_dir, tmp_path):
    """`--schedule sequential` (one model in memory at a time): all of a case's rounds before the next case's; the
    A-vs-A copy of the only model still gives a floor."""
    out = tmp_path / "seq.json"
    args = ["--teacher", str(tiny_pipeline_dir), "--quick", "--presets", "none", "--runtimes", "pytorch"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main([*args, "--schedule", "sequential", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    (case,) = report["cases"]
    floor = report["noise_floor"]
    assert (floor["model"], floor["runtime"], report["config"]["schedule"]) == ("teacher", "pytorch", "sequential")
    assert max(case["round_starts_s"]) < min(floor["copy"]["round_starts_s"])
    assert "one case after another" in " ".join(report["notes"])


def test_a_failing_case_is_reported_not_raised(tmp_path):
    """A case whose process fails (here: a job without a model) answers with its error; the run goes on."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from benchmarks.latency.worker import CaseWorker

    worker = CaseWorker("broken pytorch", {"runtime": "pytorch", "threads": 1, "warmup": 0}, tmp_path, 120.0)
    assert worker.start() is False
    worker.round()  # nothing to do once failed
    result = worker.finish()
    assert set(result) == {"error"} and result["error"].startswith("worker failed: KeyError")
