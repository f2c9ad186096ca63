import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from refine_control.cli import build_parser, main
from refine_control.training.config import DistillConfig


def distill_args(teacher, data, run, *extra):
    labelled, unlabelled = data
    return [
        "--recipe",
        "guided",
        "--teacher",
        str(teacher),
        "--labelled",
        str(labelled),
        "--unlabelled",
        str(unlabelled),
        "--output-dir",
        str(run),
        "--batch-size",
        "2",
        "--warmup-steps",
        "2",
        "--log-every",
        "1",
        "-q",
        *extra,
    ]


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_parser_options_match_the_config_dataclass():
    run_only = {"dry_run", "ignore_memory_estimate"}  # how the command runs, not what it computes
    dests = {a.dest for a in build_parser()._actions} - {"help", "version", "verbose", "quiet", *run_only}
    assert dests == {f.name for f in dataclasses.fields(DistillConfig)}


def test_cosine_schedule_warms_up_then_decays_to_zero_in_each_stage():
    from refine_control.training.trainer import _learning_rate

    cfg = DistillConfig(Path("unused"), learning_rate=1.0, warmup_steps=2, lr_schedule="cosine", stage2_lr_scale=0.5)
    # Stage 1 (4 steps): warm-up 1/2, then cos decay over the stage: 0.5·(1 + cos(π·k/4)).
    assert [_learning_rate(cfg, k, 4, 2) for k in range(4)] == pytest.approx(
        [0.5 * 1.0, 1.0 * 0.5 * (1 + 0.5**0.5), 0.5, 0.5 * (1 - 0.5**0.5)]
    )
    # Stage 2 (2 steps) restarts at half the rate: warm-up 1/2 at its first step, then cos(π/2) = 0.
    assert [_learning_rate(cfg, k, 4, 2) for k in (4, 5)] == pytest.approx([0.5 * 0.5 * 1.0, 0.5 * 0.5])


def test_help_lists_presets(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "compact-tiny" in capsys.readouterr().out


@pytest.mark.parametrize("preset", ["controlnet-half", "compact-small"])
def test_two_stage_distillation_end_to_end(tiny_pipeline_dir, tiny_data, tmp_path, preset):
    from diffusers import StableDiffusionControlNetPipeline

    run = tmp_path / "run"
    args = distill_args(
        tiny_pipeline_dir, tiny_data, run, "--student", preset, "--max-steps", "6", "--stage2-steps", "3",
        "--learning-rate", "1e-4", "--lr-schedule", "constant",
    )  # fmt: skip
    assert main(args) == 0
    log = rows(run)
    assert [r["stage"] for r in log] == [1] * 6 + [2] * 3
    assert all({"task", "output", "feature"} <= set(r) for r in log)
    assert log[-1]["lr"] == pytest.approx(1e-4 * 0.5)  # stage-2 learning rate is halved
    config = json.loads((run / "config.json").read_text())
    assert config["student"] == preset and config["resolved"]["stage2_steps"] == 3
    assert config["resolved"]["feature_taps"]
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["student_denoiser_params"] < summary["teacher_denoiser_params"]
    pipe = StableDiffusionControlNetPipeline.from_pretrained(run / "student")
    image = pipe(
        "a red square",
        image=torch.rand(1, 3, 16, 16),
        num_inference_steps=2,
        height=16,
        width=16,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    assert image.shape == (1, 16, 16, 3)
    # The projectors are training-only: nothing of them is in the saved student.
    assert not any("projector" in k for f in (run / "student").rglob("*.safetensors") for k in load_file(f))
    # A finished run is never overwritten by accident.
    assert main(args) == 2
    assert main([*args, "--overwrite"]) == 0


def test_scratch_baseline_trains_on_the_task_term_only(tiny_pipeline_dir, tiny_data, tmp_path):
    run = tmp_path / "run"
    assert (
        main(
            distill_args(
                tiny_pipeline_dir, tiny_data, run, "--loss-weights", "1,0,0", "--max-steps", "3", "--stage2-steps", "0"
            )
        )
        == 0
    )
    assert all(set(r) & {"task", "output", "feature"} == {"task"} for r in rows(run))


def test_unlabelled_task_loss_changes_stage_2_only(tiny_pipeline_dir, tiny_data, tmp_path):
    """The attribution control (`--unlabelled-loss task`): stage 1 is the recipe's, bit for bit; stage 2 drops the
    teacher's targets on the unlabelled samples, so its output and feature terms shrink (replay keeps them)."""
    common = ("--student", "compact-small", "--max-steps", "2", "--stage2-steps", "2", "--log-every", "1")
    logs = {}
    for loss in ("tri-level", "task"):
        run = tmp_path / loss
        assert main(distill_args(tiny_pipeline_dir, tiny_data, run, *common, "--unlabelled-loss", loss)) == 0
        logs[loss] = rows(run)
        assert json.loads((run / "config.json").read_text())["unlabelled_loss"] == loss
    recipe, control = logs["tri-level"], logs["task"]
    assert recipe[:2] == [{**r, "sec_per_step": recipe[i]["sec_per_step"]} for i, r in enumerate(control[:2])]
    assert control[2]["feature"] < recipe[2]["feature"] and control[2]["output"] < recipe[2]["output"]


def test_transfer_init_reports_what_was_copied(tiny_pipeline_dir, tiny_data, tmp_path):
    run = tmp_path / "run"
    assert (
        main(
            distill_args(
                tiny_pipeline_dir,
                tiny_data,
                run,
                "--init",
                "uniform",
                "--student",
                "compact-small",
                "--max-steps",
                "1",
                "--stage2-steps",
                "0",
            )
        )
        == 0
    )
    report = json.loads((run / "init_report.json").read_text())
    assert report["init"] == "uniform"
    assert report["unet"]["sliced"] and report["controlnet"]["sliced"]
    # Against the saved student's own tensors (init changes no shape): every tensor is listed once, the total is
    # their size, and with fraction 1 the copied elements are the sizes of the copied and sliced tensors.
    for part in ("unet", "controlnet"):
        saved = load_file(next((run / "student" / part).glob("*.safetensors")))
        lists = [report[part][k] for k in ("copied", "sliced", "skipped", "missing")]
        assert sorted(name for names in lists for name in names) == sorted(saved)
        assert report[part]["elements_total"] == sum(t.numel() for t in saved.values())
        transferred = report[part]["copied"] + report[part]["sliced"]
        assert report[part]["elements_copied"] == sum(saved[name].numel() for name in transferred)


def test_resume_continues_bit_for_bit(tiny_pipeline_dir, tiny_data, tmp_path):
    straight = tmp_path / "straight"
    extra = (
        "--student",
        "compact-small",
        "--max-steps",
        "4",
        "--stage2-steps",
        "2",
        "--checkpoint-every",
        "3",
        "--ema-decay",
        "0.9",
    )
    assert main(distill_args(tiny_pipeline_dir, tiny_data, straight, *extra)) == 0
    assert (straight / "checkpoints" / "step-000003" / "state.json").is_file()
    # Simulate a crash right after the step-3 checkpoint: keep only what existed then.
    crashed = tmp_path / "crashed"
    shutil.copytree(straight, crashed)
    shutil.rmtree(crashed / "student")
    (crashed / "metrics.json").unlink()
    assert main(distill_args(tiny_pipeline_dir, tiny_data, crashed, *extra)) == 2  # unfinished: needs --resume
    assert main(distill_args(tiny_pipeline_dir, tiny_data, crashed, *extra, "--resume")) == 0
    for name in ("unet", "controlnet"):
        a = load_file(next((straight / "student" / name).glob("*.safetensors")))
        b = load_file(next((crashed / "student" / name).glob("*.safetensors")))
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert rows(straight) == [
        {**r, "sec_per_step": s["sec_per_step"]} for r, s in zip(rows(crashed), rows(straight), strict=True)
    ]
    assert json.loads((crashed / "metrics.json").read_text())["steps"]["resumed_from"] == 3


def test_resume_refuses_changed_options(tiny_pipeline_dir, tiny_data, tmp_path):
    run = tmp_path / "run"
    base = distill_args(
        tiny_pipeline_dir, tiny_data, run, "--max-steps", "2", "--stage2-steps", "0", "--checkpoint-every", "1"
    )
    assert main(base) == 0
    shutil.rmtree(run / "student")
    assert main([*base, "--resume", "--learning-rate", "0.5"]) == 2


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing_teacher", "neither an existing directory nor a hub id"),
        ("not_a_run_dir", "is not empty and is not a refine-control run dir"),
        ("truncated_image", "cannot be read"),
        ("no_captions", "has no captioned images"),
        ("stage2_without_unlabelled", "needs unlabelled images"),
        ("bad_weights", "--loss-weights"),
        ("resume_nothing", "no run to resume"),
    ],
)
def test_bad_input_gives_one_line_and_exit_code_2(tiny_pipeline_dir, tmp_path, capsys, case, message):
    from tiny_models import write_image_folder

    labelled = write_image_folder(tmp_path / "labelled", 4)
    run = tmp_path / "run"
    teacher = str(tiny_pipeline_dir)
    extra: list[str] = ["--max-steps", "1"]
    if case == "missing_teacher":
        teacher = str(tmp_path / "nowhere")
    elif case == "not_a_run_dir":
        run.mkdir()
        (run / "precious.txt").write_text("keep me")
    elif case == "truncated_image":
        data = (labelled / "0001.png").read_bytes()
        (labelled / "0001.png").write_bytes(data[:40])
    elif case == "no_captions":
        labelled = write_image_folder(tmp_path / "unlabelled", 4, labelled=False)
    elif case == "stage2_without_unlabelled":
        extra += ["--stage2-steps", "2"]
    elif case == "bad_weights":
        extra += ["--loss-weights", "0,0,0"]
    elif case == "resume_nothing":
        extra += ["--resume"]
    code = main(["--teacher", teacher, "--labelled", str(labelled), "--output-dir", str(run), "-q", *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert "Traceback" not in err
    if case == "not_a_run_dir":
        assert (run / "precious.txt").read_text() == "keep me"
    else:
        assert not (run / "student").exists()


def test_disk_full_during_a_checkpoint_leaves_no_half_written_files(tiny_pipeline_dir, tiny_data, tmp_path):
    """A real write failure: the OS file-size limit (RLIMIT_FSIZE) makes the checkpoint write fail with EFBIG."""
    run = tmp_path / "run"
    args = distill_args(
        tiny_pipeline_dir,
        tiny_data,
        run,
        "--student",
        "compact-small",
        "--max-steps",
        "3",
        "--stage2-steps",
        "0",
        "--checkpoint-every",
        "1",
    )
    script = textwrap.dedent(f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (150_000, 150_000))
        from refine_control.cli import main
        sys.exit(main({args!r}))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "error: cannot write" in result.stderr and "hint: free some disk space" in result.stderr
    assert "Traceback" not in result.stderr
    leftovers = [p.name for p in (run / "checkpoints").iterdir()] if (run / "checkpoints").exists() else []
    assert leftovers == []
    assert not (run / "student").exists()


def test_two_processes_keep_replicas_in_sync(tiny_pipeline_dir, tiny_data, tmp_path):
    """The accelerate path on CPU with two processes (gloo): DDP averages gradients, so the replicas, which see
    different batches, end with bit-identical weights."""
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "refine_control.cli",
        *distill_args(tiny_pipeline_dir, tiny_data, run, "--max-steps", "3", "--stage2-steps", "0"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["world_size"] == 2
    assert summary["replicas_in_sync"] is True


def test_a_run_that_failed_before_its_first_checkpoint_can_simply_be_rerun(tiny_pipeline_dir, tmp_path):
    from tiny_models import write_image_folder

    labelled = write_image_folder(tmp_path / "labelled", 4)
    good = (labelled / "0001.png").read_bytes()
    (labelled / "0001.png").write_bytes(good[:40])
    args = [
        "--recipe",
        "guided",
        "--teacher",
        str(tiny_pipeline_dir),
        "--labelled",
        str(labelled),
        "-o",
        str(tmp_path / "run"),
        "-q",
        "--max-steps",
        "1",
        "--batch-size",
        "2",
    ]
    assert main(args) == 2
    (labelled / "0001.png").write_bytes(good)
    assert main(args) == 0
