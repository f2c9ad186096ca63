import json
import shutil

import numpy as np
import pytest
from tiny_models import write_image_folder

from refine_control.errors import ConfigError
from refine_control.evaluation.cli import main

FAST = [
    "--num-samples",
    "64",
    "--steps",
    "1",
    "--teacher-steps",
    "1",
    "--oracle-steps",
    "3",
    "--batch-size",
    "64",
    "-q",
]


def _tiny64_pipeline():
    """A tiny random pipeline at 64 px, laid out like the builtin teacher (VAE factor 4, no full-resolution
    attention), so the shapes benchmark runs in seconds."""
    import torch
    from diffusers import (
        AutoencoderKL,
        ControlNetModel,
        DDIMScheduler,
        StableDiffusionControlNetPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    from refine_control.builtin.tokenizer import build_clip_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16, block_out_channels=(16, 32), layers_per_block=1, cross_attention_dim=32,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=2, norm_num_groups=8,
    )  # fmt: skip
    vae = AutoencoderKL(
        block_out_channels=(8, 16, 16), down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3, latent_channels=4, norm_num_groups=8, sample_size=64,
    )  # fmt: skip
    tokenizer = build_clip_tokenizer()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=1,
            num_attention_heads=2, max_position_embeddings=77,
        )
    )  # fmt: skip
    return StableDiffusionControlNetPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        controlnet=ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 16)),
        scheduler=DDIMScheduler(clip_sample=False), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def tiny64_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny64") / "pipeline"
    _tiny64_pipeline().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def fake_run(tiny64_dir, tmp_path_factory):
    """A run dir whose student is a copy of its teacher, so fidelity to the teacher is exact."""
    run = tmp_path_factory.mktemp("evalrun") / "run"
    shutil.copytree(tiny64_dir, run / "student")
    (run / "config.json").write_text(json.dumps({"teacher": str(tiny64_dir), "preprocessor": "canny"}))
    return run


def _error_line(capsys) -> str:
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1
    return errors[0]


def test_shapes_benchmark_on_a_pipeline_dir(tiny64_dir, tmp_path, capsys):
    out = tmp_path / "report.json"
    assert main([str(tiny64_dir), *FAST, "--json", str(out), "--grid", str(tmp_path / "grid.png")]) == 0
    table = capsys.readouterr().out
    assert "edge F1 vs control" in table and "domain FID" in table
    report = json.loads(out.read_text())
    assert report["benchmark"] == "shapes" and set(report["columns"]) == {"model", "ground truth"}
    truth = report["columns"]["ground truth"]
    assert truth["edge_f1"] == 1.0 and truth["mask_iou"] == 1.0 and truth["colour_delta_e"] == 0.0
    assert truth["edge_f1_strict"] == truth["edge_recall_strict"] == 1.0 and truth["edge_chamfer_px"] == 0.0
    assert "edge F1, pixel-exact (ControlNet++)" in table and "edge chamfer distance (px)" in table
    assert truth["psnr_gt_db"] == "inf" and truth["ssim_gt"] == pytest.approx(1.0)
    model = report["metrics"]
    names = ("psnr_gt_db", "ssim_gt", "edge_f1", "mask_iou", "colour_delta_e", "texture_acc", "domain_fid")
    for name in (*names, "edge_precision_strict", "edge_recall_strict", "edge_f1_strict", "edge_chamfer_px"):
        assert isinstance(model[name], float), name
    from PIL import Image

    assert np.asarray(Image.open(tmp_path / "grid.png")).shape == (2 * 64, 16 * 64, 3)  # controls, then the model


def test_same_seed_gives_the_same_report(tiny64_dir, tmp_path):
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    for path in paths:
        assert main([str(tiny64_dir), *FAST, "--json", str(path)]) == 0
    first, second = (json.loads(p.read_text()) for p in paths)
    assert first["columns"] == second["columns"]


def test_run_dir_compares_student_and_teacher(fake_run, capsys):
    assert main([str(fake_run), *FAST]) == 0
    report = json.loads((fake_run / "eval" / "metrics.json").read_text())
    assert set(report["columns"]) == {"student", "teacher", "ground truth"}
    assert report["metrics"]["teacher_psnr_db"] == "inf"  # the student is a copy of the teacher
    assert report["metrics"]["teacher_ssim"] == pytest.approx(1.0)
    assert report["columns"]["student"]["edge_f1"] == report["columns"]["teacher"]["edge_f1"]
    # Kept ratios with their paired bootstrap intervals: a copy keeps exactly 100%, in every resample.
    metrics, teacher = report["metrics"], report["columns"]["teacher"]
    assert teacher["edge_f1_strict"] > 0 and "edge_chamfer_px" in teacher
    assert metrics["edge_f1_strict_kept"] == 1.0 and metrics["intervals"]["edge_f1_strict_kept"] == [1.0, 1.0]
    assert metrics["intervals"]["edge_f1_kept"] == [1.0, 1.0] and "bootstrap" in metrics["intervals"]["method"]
    assert "95% intervals" in capsys.readouterr().out
    per_image = report["per_image"]
    assert set(per_image) == {"student", "teacher"} and len(per_image["student"]["edge_f1_strict"]) == 64
    assert np.mean(per_image["teacher"]["edge_f1_strict"]) == pytest.approx(teacher["edge_f1_strict"], abs=1e-6)
    assert list((fake_run / "eval").glob("shapes-oracle-*.safetensors")), "the oracle is cached in the run dir"


def test_image_folder_uses_metrics_without_ground_truth(tiny_pipeline_dir, tmp_path, capsys):
    folder = write_image_folder(tmp_path / "folder", 140, size=16)
    out = tmp_path / "folder.json"
    args = [str(tiny_pipeline_dir), "--data", str(folder), "--teacher", str(tiny_pipeline_dir), "--json", str(out)]
    assert main([*args, *FAST]) == 0
    report = json.loads(out.read_text())
    assert report["benchmark"] == "folder" and report["judge"]["tasks"] == {"caption": 3}
    metrics = report["metrics"]
    assert {"edge_f1", "domain_fid", "domain_kid", "teacher_psnr_db"} <= set(metrics)
    assert "psnr_gt_db" not in metrics and "mask_iou" not in metrics
    assert report["columns"]["real images"]["edge_f1"] == 1.0
    # Captions that name classes: the judge scores whether each image shows its prompted class.
    assert 0.0 <= metrics["caption_acc"] <= 1.0 and "caption_acc" in report["columns"]["real images"]
    assert "prompted class accuracy (judge)" in capsys.readouterr().out


def test_missing_target_is_a_usage_error(tmp_path, capsys):
    assert main([str(tmp_path / "nope"), *FAST]) == 2
    assert "neither `builtin` nor an existing directory" in _error_line(capsys)


def test_run_dir_without_student(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"teacher": "builtin"}))
    assert main([str(run), *FAST]) == 2
    assert "has no student" in _error_line(capsys)


def test_unknown_teacher_in_run_config(fake_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(fake_run / "student", run / "student")
    (run / "config.json").write_text(json.dumps({"teacher": str(tmp_path / "no-such-teacher")}))
    assert main([str(run), *FAST]) == 2
    assert "no-such-teacher" in _error_line(capsys)


def test_image_folder_without_captions(tiny_pipeline_dir, tmp_path, capsys):
    folder = write_image_folder(tmp_path / "plain", 70, labelled=False, size=16)
    assert main([str(tiny_pipeline_dir), "--data", str(folder), *FAST]) == 2
    assert "no captions" in _error_line(capsys)


def test_image_folder_smaller_than_num_samples(tiny_pipeline_dir, tmp_path, capsys):
    folder = write_image_folder(tmp_path / "small", 20, size=16)
    assert main([str(tiny_pipeline_dir), "--data", str(folder), *FAST]) == 2
    assert "fewer than `--num-samples`" in _error_line(capsys)


def test_too_few_samples_for_fid(tiny64_dir, capsys):
    assert main([str(tiny64_dir), "--num-samples", "10"]) == 2
    assert "too few for the domain FID" in _error_line(capsys)


def test_large_pipeline_without_data_needs_a_folder(tiny_pipeline_dir, capsys):
    assert main([str(tiny_pipeline_dir), *FAST]) == 2  # 16 px: the shapes benchmark does not apply
    assert "--data" in capsys.readouterr().err


def test_builtin_without_weights_says_how_to_train_them(tmp_path, monkeypatch, capsys):
    import refine_control.builtin as builtin

    monkeypatch.setattr(builtin, "BUILTIN_TEACHER_DIR", tmp_path / "teacher")
    assert main(["builtin", *FAST]) == 2
    err = capsys.readouterr().err
    assert "weights are missing" in err and "refine-teacher" in err


def test_asymmetric_student_loads_in_a_fresh_process(tiny_pipeline_dir, tiny_data, tmp_path):
    """A `controlnet-half` student holds an `AsymControlNetModel`: refine-eval must load it without the caller
    having imported the project's model module first."""
    import subprocess
    import sys

    from refine_control.cli import main as distill

    labelled, _ = tiny_data
    run = tmp_path / "run"
    argv = ["--recipe", "guided", "--teacher", str(tiny_pipeline_dir), "--labelled", str(labelled)]
    argv += ["--student", "controlnet-half"]
    assert distill([*argv, "-o", str(run), "--max-steps", "1", "--batch-size", "2", "-q"]) == 0
    code = "import sys; from refine_control.models.pipeline_dir import load_pipeline; load_pipeline(sys.argv[1])"
    result = subprocess.run([sys.executable, "-c", code, str(run / "student")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_a_model_is_sampled_with_its_own_recommendation_and_the_teacher_with_its_defaults(fake_run):
    from refine_control.evaluation.evaluate import EvalConfig

    student = fake_run / "student"
    assert EvalConfig(str(fake_run)).model_sampling(student).steps == 20  # no recommendation: the teacher's
    (student / "sampling.json").write_text(json.dumps({"steps": 4, "guidance_scale": 2.5}))
    own = EvalConfig(str(fake_run)).model_sampling(student)
    assert (own.steps, own.guidance_scale) == (4, 2.5)
    given = EvalConfig(str(fake_run), steps=8, guidance_scale=1.0).model_sampling(student)
    assert (given.steps, given.guidance_scale) == (8, 1.0)
    assert EvalConfig(str(fake_run)).teacher_sampling.steps == 20
    assert own.timesteps is None and given.timesteps is None  # the pipeline's own spacing
    with pytest.raises(ConfigError, match="applies to a few-step"):
        EvalConfig(str(fake_run), first_timestep=759).model_sampling(student)
    # A few-step student's timesteps start where it recommends, or where --first-timestep says.
    (student / "scheduler").mkdir(exist_ok=True)
    linear = {"_class_name": "LCMScheduler", "beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02}
    (student / "scheduler" / "scheduler_config.json").write_text(json.dumps(linear))
    lcm = {"steps": 2, "guidance_scale": 3.0, "scheduler": "LCMScheduler", "guidance_range": [2, 5]}
    (student / "sampling.json").write_text(json.dumps({**lcm, "first_timestep": 759}))
    assert EvalConfig(str(fake_run)).model_sampling(student).timesteps == (759, 379)
    assert EvalConfig(str(fake_run), steps=3).model_sampling(student).timesteps == (759, 519, 259)
    assert EvalConfig(str(fake_run), first_timestep=639).model_sampling(student).timesteps == (639, 319)
    (student / "sampling.json").write_text(json.dumps(lcm))  # an older few-step student: LCM's own, from 999
    assert EvalConfig(str(fake_run)).model_sampling(student).timesteps is None
    assert EvalConfig(str(fake_run), first_timestep=759).model_sampling(student).timesteps == (759, 379)
    (student / "sampling.json").write_text("{}")
    with pytest.raises(ConfigError, match="not a valid sampling file"):
        EvalConfig(str(fake_run)).model_sampling(student)


def test_shapes_oracle_and_teacher_images_are_made_once_per_machine(tiny64_dir, tmp_path, monkeypatch):
    """The shapes oracle and the teacher's images depend on nothing of a run: a second run dir reuses them from the
    cache, and the report is exactly the one made with them fresh."""
    import refine_control.evaluation.evaluate as evaluate_module
    from refine_control.evaluation.oracle import shapes_oracle_digest

    monkeypatch.setenv("REFINE_CONTROL_CACHE", str(tmp_path / "cache"))

    def new_run(name: str):
        run = tmp_path / name
        shutil.copytree(tiny64_dir, run / "student")
        (run / "config.json").write_text(json.dumps({"teacher": str(tiny64_dir), "preprocessor": "canny"}))
        return run

    first = new_run("first")
    assert main([str(first), *FAST]) == 0
    cached = list((tmp_path / "cache" / "judges").glob("shapes-oracle-seed0-steps3-*.safetensors"))
    assert [p.name for p in cached] == [f"shapes-oracle-seed0-steps3-{shapes_oracle_digest()}.safetensors"]

    def no_training(*_args, **_kwargs):
        raise AssertionError("the oracle was trained again")

    monkeypatch.setattr(evaluate_module, "train_shapes_oracle", no_training)
    sampled = []
    real_generate = evaluate_module.generate
    monkeypatch.setattr(evaluate_module, "generate", lambda *a, **k: sampled.append(a[4]) or real_generate(*a, **k))
    second = new_run("second")
    assert main([str(second), *FAST]) == 0
    assert list((second / "eval").glob("shapes-oracle-*.safetensors")), "the run dir keeps its copy"
    reports = [json.loads((run / "eval" / "metrics.json").read_text()) for run in (first, second)]
    assert reports[0]["columns"] == reports[1]["columns"]
    assert len(sampled) == 1, "only the student was sampled; the teacher's images came from the cache"
    assert len(list((tmp_path / "cache" / "teacher-images").glob("*.npy"))) == 1
    # Another oracle (other steps) is not the cached one.
    with pytest.raises(AssertionError, match="trained again"):
        main([str(second), *[a if a != "3" else "4" for a in FAST]])
