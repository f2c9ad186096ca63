"""Scale-aware defaults (training/scale.py), `refine-distill --dry-run` and the memory check before a run."""

import json
from pathlib import Path

import pytest
import torch
from sd15_configs import SD15_UNET, write_sd15_config_dir

from refine_control.cli import build_parser, config_from_args, main, resolve_scale
from refine_control.errors import ConfigError
from refine_control.training.config import DistillConfig
from refine_control.training.recipe import few_step_config, tiny_decoder_config
from refine_control.training.scale import SCALES, pick_scale


@pytest.fixture(scope="module")
def sd15_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sd15_config_dir(tmp_path_factory.mktemp("sd15") / "teacher")


def _args(*argv: str):
    return build_parser().parse_args(list(argv))


def test_the_builtin_row_is_the_recipe_the_builtin_teacher_was_tuned_on():
    row = SCALES["builtin"]
    assert row.objectives == {"distill": (1600, 2e-3), "few_step": (600, 2e-4), "tiny_decoder": (1500, 1e-3)}
    assert (row.batch_size, row.resolution) == (16, None)
    cfg = DistillConfig(Path("unused"))
    assert (cfg.scale, cfg.max_steps, cfg.learning_rate, cfg.batch_size, cfg.resolution) == (
        "builtin", 1600, 2e-3, 16, None
    )  # fmt: skip


def test_the_scale_follows_the_teachers_unet_size(tiny_pipeline_dir, sd15_dir):
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        sd15_unet = UNet2DConditionModel.from_config(SD15_UNET)
    assert pick_scale(sum(p.numel() for p in sd15_unet.parameters())).name == "sd15"
    assert pick_scale(1_000_000).name == "builtin"
    # Through the CLI: config files only, no weights (the SD1.5-shaped dir has none).
    assert resolve_scale(_args("--teacher", "builtin", "-o", "r"))[0] == "builtin"
    assert resolve_scale(_args("--teacher", str(tiny_pipeline_dir), "-o", "r"))[0] == "builtin"
    scale, why = resolve_scale(_args("--teacher", str(sd15_dir), "-o", "r"))
    assert scale == "sd15" and "859.5 M parameters" in why
    cfg = config_from_args(_args("--teacher", str(sd15_dir), "--labelled", "data", "-o", "r"))
    row = SCALES["sd15"]
    assert (cfg.scale, cfg.max_steps, cfg.learning_rate, cfg.batch_size) == (
        "sd15", row.objectives["distill"][0], row.objectives["distill"][1], row.batch_size
    )  # fmt: skip


def test_explicit_flags_win_over_the_scale(sd15_dir, tmp_path):
    argv = ["--teacher", str(sd15_dir), "--labelled", "data", "-o", str(tmp_path / "r")]
    cfg = config_from_args(
        _args(*argv, "--learning-rate", "3e-4", "--batch-size", "2", "--max-steps", "7", "--few-step-steps", "5")
    )
    assert (cfg.scale, cfg.learning_rate, cfg.batch_size, cfg.max_steps, cfg.few_step_steps) == (
        "sd15", 3e-4, 2, 7, 5
    )  # fmt: skip
    assert config_from_args(_args(*argv, "--scale", "builtin")).learning_rate == 2e-3
    assert config_from_args(_args(*argv, "--resolution", "256")).resolution == 256
    # A row only fills what no flag set: the few-step and tiny-decoder stages take their lr/steps from the row.
    few, tiny = _stage_configs(cfg)
    assert (few.scale, few.max_steps, few.learning_rate, few.batch_size) == ("sd15", 5, 1e-6, 2)
    assert (tiny.scale, tiny.max_steps, tiny.learning_rate, tiny.batch_size) == ("sd15", 5000, 1e-3, 2)


def _stage_configs(cfg: DistillConfig) -> tuple[DistillConfig, DistillConfig]:
    """The fast recipe's few-step and tiny-decoder stage configs, as if their earlier stages had finished."""
    from refine_control.training.recipe import stage_dir

    for stage in ("compact", "few-step"):
        folder = stage_dir(cfg.output_dir, stage)
        (folder / "student").mkdir(parents=True)
        (folder / "student" / "model_index.json").write_text("{}")
        (folder / "config.json").write_text(json.dumps(cfg.to_json()))
    return few_step_config(cfg), tiny_decoder_config(cfg)


def _dry_run(capsys: pytest.CaptureFixture, *argv: str) -> dict[str, str]:
    assert main([*argv, "--dry-run"]) == 0
    out = capsys.readouterr().out
    return {"text": out, **{line.split(":", 1)[0].strip(): line for line in out.splitlines()}}


def test_dry_run_prints_the_recipe_and_its_cost_and_writes_nothing(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    report = _dry_run(capsys, "--teacher", "builtin", "-o", str(run))
    assert not run.exists() and list(tmp_path.iterdir()) == []
    text = report["text"]
    assert text.startswith("dry run: nothing is trained or written")
    assert "scale: builtin" in text and "4.6 M parameters" in text
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.startswith("  ")}
    assert rows["compact"][1:5] == ["1600", "0.002", "16", "64"]
    assert rows["few-step"][1:5] == ["600", "0.0002", "16", "64"]
    assert "tiny-decoder" not in rows and "tiny decoder: not added" in text  # the MAC rule, as recipe.py decides
    assert report["teacher params"] == "teacher params: UNet 4.59 M + ControlNet 2.04 M"
    assert report["student params"].startswith("student params: compact-wide: UNet ")
    assert "teacher 0.40 G" in report["MACs per denoiser step at 64 px, batch 1"]
    assert "GiB per process" in report["memory estimate"] and ": fits" in report["this machine"]
    assert float(rows["compact"][5]) > 2  # the 2 GiB allowance plus weights and activations
    assert float(rows["compact"][6]) > 0  # seconds per step (lower bound)


def test_dry_run_of_an_sd15_sized_teacher_from_its_configs_alone(capsys, sd15_dir, tmp_path):
    run = tmp_path / "run"
    argv = ["--teacher", str(sd15_dir), "--labelled", str(tmp_path / "data"), "-o", str(run), "--recipe", "guided"]
    report = _dry_run(capsys, *argv, "--mixed-precision", "bf16")
    assert not run.exists()
    rows = {line.split()[0]: line.split() for line in report["text"].splitlines() if line.startswith("  ")}
    assert rows["distill"][1:5] == ["50000", "5e-05", "4", "512"]
    assert report["teacher params"] == "teacher params: UNet 859.52 M + ControlNet 361.28 M"
    assert "teacher 543.28 G" in report["MACs per denoiser step at 512 px, batch 1"]
    memory = float(rows["distill"][5])
    assert 8 < memory < 24  # the sd15 row's batch is chosen to fit a 24 GiB GPU in bf16


def test_a_run_whose_memory_estimate_exceeds_the_machine_refuses_to_start(capsys, sd15_dir, tmp_path):
    run = tmp_path / "run"
    argv = ["--teacher", str(sd15_dir), "--labelled", str(tmp_path / "data"), "-o", str(run)]
    assert main([*argv, "--recipe", "guided", "--batch-size", "4096", "-q"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("error: the memory estimate of this run") and "exceeds this machine's" in err[0]
    assert err[1].startswith("hint: lower --batch-size") and "--ignore-memory-estimate" in err[1]
    assert not run.exists()
    # Overridden, the run goes on and stops at the next problem: this teacher has configs but no weights.
    assert main([*argv, "--recipe", "guided", "--batch-size", "4096", "--ignore-memory-estimate", "-q"]) == 2
    assert "memory estimate" not in capsys.readouterr().err


def test_the_check_plans_for_the_measured_margin_over_the_formula(monkeypatch, sd15_dir, tmp_path):
    from refine_control.training import plan
    from refine_control.training.estimate import GIB, MEASURED_MARGIN

    cfg = config_from_args(_args("--teacher", str(sd15_dir), "--labelled", "data", "-o", str(tmp_path / "r")))
    formula = max(s.memory_total for s in plan._report(cfg, macs=False)["stages"])
    monkeypatch.setattr(plan, "_margin", lambda: MEASURED_MARGIN)  # a CPU run, as measured in the rehearsal
    monkeypatch.setattr(plan, "machine_memory", lambda: (int(formula * 1.3), "RAM"))
    with pytest.raises(ConfigError, match=f"{formula / GIB:.1f} GiB by the formula x {MEASURED_MARGIN:g}"):
        plan.check_memory(cfg)  # the formula alone would fit
    monkeypatch.setattr(plan, "machine_memory", lambda: (int(formula * MEASURED_MARGIN) + 1, "RAM"))
    plan.check_memory(cfg)
