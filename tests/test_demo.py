from refine_control.demo import main


def test_bad_demo_arguments_give_one_line_and_exit_code_2(tmp_path, capsys):
    assert main(["--output-dir", str(tmp_path / "demo"), "--max-steps", "0"]) == 2
    assert capsys.readouterr().err.startswith("error: `--max-steps` must be >= 1")
    assert not (tmp_path / "demo").exists()


def test_too_few_eval_samples_are_refused_before_the_distillation(tmp_path, capsys):
    assert main(["--output-dir", str(tmp_path / "demo"), "--eval-samples", "8"]) == 2
    assert capsys.readouterr().err.startswith("error: `--eval-samples` 8 is too few for the domain FID")
    assert not (tmp_path / "demo").exists()
