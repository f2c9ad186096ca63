import json

import pytest

from refine_control.demo import main
from refine_control.training.config import FEW_STEP_SAMPLING_STEPS


def test_bad_demo_arguments_give_one_line_and_exit_code_2(tmp_path, capsys):
    assert main(["--output-dir", str(tmp_path / "demo"), "--max-steps", "0"]) == 2
    assert capsys.readouterr().err.startswith("error: `--max-steps` must be >= 1")
    assert not (tmp_path / "demo").exists()


def test_too_few_eval_samples_are_refused_before_the_distillation(tmp_path, capsys):
    assert main(["--output-dir", str(tmp_path / "demo"), "--eval-samples", "8"]) == 2
    assert capsys.readouterr().err.startswith("error: `--eval-samples` 8 is too few for the domain FID")
    assert not (tmp_path / "demo").exists()


@pytest.mark.slow
def test_the_demo_succeeds_end_to_end_at_its_smallest(tmp_path, capsys):
    """The successful path of `make demo` at its smallest size: 2 compact and 2 few-step distillation steps, 64
    evaluation samples (the FID minimum). Minutes on 2 busy cores (the built-in teacher is sampled at its own 20
    guided steps), so it is slow."""
    out = tmp_path / "demo"
    argv = ["--output-dir", str(out), "--max-steps", "2", "--stage2-steps", "0", "--eval-samples", "64"]
    assert main([*argv, "--few-step-steps", "2"]) == 0
    text = capsys.readouterr().out
    assert "teacher vs student" in text and f"refine-serve {out / 'model'}" in text
    assert json.loads((out / "model" / "parity.json").read_text())["passed"] is True
    summary = json.loads((out / "results" / "demo" / "make-demo.json").read_text())["metrics"]
    evaluated = json.loads((out / "eval" / "metrics.json").read_text())
    # The printed comparison carries refine-eval's numbers, not numbers of its own.
    for key in ("edge_f1", "shape_acc"):
        assert summary["student"][key] == evaluated["metrics"][key]
        assert summary["teacher"][key] == evaluated["columns"]["teacher"][key]
    assert (out / "student" / "model_index.json").is_file()
    # The demo shows the default recipe's student: few-step, one pass per step, against the teacher's guided 20.
    assert summary["student"]["steps"] == FEW_STEP_SAMPLING_STEPS and summary["student"]["guidance"] == "embedded"
    assert summary["teacher"]["steps"] == 20 and summary["teacher"]["guidance"] == "pair"
    stages = json.loads((out / "demo_stages.json").read_text())
    # Rerunning with --reuse keeps the finished stages and reports the seconds they recorded; only the measurement
    # runs again. An evaluation made with other settings is not kept.
    assert main([*argv, "--few-step-steps", "2", "--reuse"]) == 0
    text = capsys.readouterr().out
    assert all(f"{name}: reusing the finished stage" in text for name in ("distil", "evaluate", "export"))
    again = json.loads((out / "results" / "demo" / "make-demo.json").read_text())["metrics"]
    assert again["reused"] == ["distil", "evaluate", "export"] and again["seconds"]["evaluate"] == stages["evaluate"]
    assert main(["--output-dir", str(out), "--eval-samples", "65", "--reuse"]) == 0
    text = capsys.readouterr().out
    assert "distil: reusing" in text and "evaluate: reusing" not in text and "export: reusing" not in text
