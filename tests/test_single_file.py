"""Single-file checkpoints as the teacher (`--teacher model.safetensors --controlnet cn.safetensors`), loaded
through diffusers' `from_single_file` with a local config dir; nothing is ever downloaded."""

import json
import shutil
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from safetensors.torch import save_file
from single_file_models import pipeline_to_original
from tiny_models import build_tiny_pipeline

from refine_control.cli import main
from refine_control.errors import ConfigError
from refine_control.models.teacher import load_teacher


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny teacher as a diffusers dir, as one original-layout checkpoint + a ControlNet file, and its configs."""
    root = tmp_path_factory.mktemp("single")
    pipeline = build_tiny_pipeline()
    pipeline.save_pretrained(root / "full")
    save_file(pipeline_to_original(pipeline), str(root / "model.safetensors"))
    save_file({k: v.contiguous() for k, v in pipeline.controlnet.state_dict().items()}, str(root / "cn.safetensors"))
    shutil.copytree(root / "full", root / "config", ignore=shutil.ignore_patterns("*.safetensors"))
    return {k: root / n for k, n in (("full", "full"), ("model", "model.safetensors"), ("cn", "cn.safetensors"),
                                     ("config", "config"), ("root", "."))}  # fmt: skip


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    """A local Hugging Face cache without the configs diffusers would infer (as on a fresh machine)."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))


def test_a_single_file_teacher_loads_the_same_weights_as_its_diffusers_dir(files):
    single = load_teacher(str(files["model"]), str(files["cn"]), teacher_config=str(files["config"]))
    reference = load_teacher(str(files["full"]))
    for name in ("unet", "vae", "text_encoder", "controlnet"):
        got, want = getattr(single, name).state_dict(), getattr(reference, name).state_dict()
        assert set(got) == set(want), name
        assert all(torch.equal(got[k], want[k]) for k in want), name
        assert not any(p.requires_grad for p in getattr(single, name).parameters())
    assert type(single.scheduler) is type(reference.scheduler)
    assert single.tokenizer("a red square").input_ids == reference.tokenizer("a red square").input_ids
    # A single-file ControlNet on a diffusers teacher dir (its config: the dir's controlnet/).
    mixed = load_teacher(str(files["full"]), str(files["cn"]))
    assert torch.equal(mixed.controlnet.controlnet_mid_block.weight, reference.controlnet.controlnet_mid_block.weight)


def test_refine_distill_trains_from_single_files_and_records_the_config_dir(files, tiny_data, tmp_path, capsys):
    labelled, _ = tiny_data
    teacher = ["--teacher", str(files["model"]), "--controlnet", str(files["cn"]), "--teacher-config"]
    argv = [*teacher, str(files["config"]), "--labelled", str(labelled), "--student", "compact-small"]
    assert main([*argv, "-o", str(tmp_path / "dry"), "--dry-run"]) == 0
    assert "scale: builtin" in capsys.readouterr().out and not (tmp_path / "dry").exists()
    run = tmp_path / "run"
    options = ["--recipe", "guided", "--max-steps", "2", "--batch-size", "2", "-q"]
    assert main([*argv, "-o", str(run), *options]) == 0
    config = json.loads((run / "config.json").read_text())
    assert (config["teacher"], config["teacher_config"]) == (str(files["model"]), str(files["config"]))
    assert (run / "student" / "model_index.json").is_file()
    # A stage started from the run finds the same teacher through the recorded config dir.
    assert main(["--from", str(run), "--few-step", "-o", str(tmp_path / "few-dry"), "--dry-run"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
    assert [row[:4] for row in rows[1:]] == [["few-step", "600", "0.0002", "16"]]  # the builtin row's few-step stage
    few = tmp_path / "few"
    assert main(["--from", str(run), "--few-step", "--max-steps", "1", "--batch-size", "2", "-o", str(few), "-q"]) == 0
    assert json.loads((few / "config.json").read_text())["teacher_config"] == str(files["config"])


def _refused(capsys, tmp_path, *argv: str) -> str:
    run = tmp_path / "run"
    assert main([*argv, "--labelled", str(tmp_path / "data"), "-o", str(run), "-q"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("error: ") and lines[1].startswith("hint: "), lines
    assert not run.exists()
    return lines[0] + "\n" + lines[1]


def test_a_pickled_checkpoint_needs_allow_pickle_weights(files, tmp_path, capsys):
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": pipeline_to_original(build_tiny_pipeline())}, ckpt)
    cn = ["--controlnet", str(files["cn"]), "--teacher-config", str(files["config"])]
    message = _refused(capsys, tmp_path, "--teacher", str(ckpt), *cn)
    assert f"--teacher {ckpt} is a pickled checkpoint (.ckpt)" in message and "--allow-pickle-weights" in message
    cn_ckpt = tmp_path / "cn.ckpt"
    torch.save(build_tiny_pipeline().controlnet.state_dict(), cn_ckpt)
    message = _refused(capsys, tmp_path, "--teacher", str(files["full"]), "--controlnet", str(cn_ckpt))
    assert f"--controlnet {cn_ckpt} is a pickled checkpoint" in message
    # Trusted, it loads (diffusers reads it with torch.load(weights_only=True)).
    teacher = load_teacher(str(ckpt), str(files["cn"]), teacher_config=str(files["config"]), allow_pickle_weights=True)
    assert tuple(teacher.unet.config.block_out_channels) == (16, 32)


def test_configs_that_cannot_be_found_offline_are_an_error_naming_the_file(files, tmp_path, capsys, empty_hub_cache):
    message = _refused(capsys, tmp_path, "--teacher", str(files["model"]), "--controlnet", str(files["cn"]))
    assert f"the configs of --teacher {files['model']} cannot be inferred offline" in message
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in message and "--teacher-config DIR" in message
    assert not list(Path(huggingface_hub.constants.HF_HUB_CACHE).glob("*"))  # nothing was fetched
    # A ControlNet file whose config is neither given nor next to the teacher.
    base = tmp_path / "base"
    shutil.copytree(files["full"], base, ignore=shutil.ignore_patterns("controlnet"))
    message = _refused(capsys, tmp_path, "--teacher", str(base), "--controlnet", str(files["cn"]))
    assert f"the configs of --controlnet {files['cn']} cannot be inferred offline" in message


def test_a_checkpoint_that_is_not_sd1x_or_misses_parts_is_refused(files, tmp_path, capsys):
    # The ControlNet file passed as the base model: diffusers reads its keys as a ControlNet.
    message = _refused(capsys, tmp_path, "--teacher", str(files["cn"]), "--controlnet", str(files["cn"]))
    assert f"--teacher {files['cn']} is not an SD1.x model" in message and "'controlnet'" in message
    other = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(2, 2)}, str(other))
    message = _refused(capsys, tmp_path, "--teacher", str(other), "--controlnet", str(files["cn"]))
    assert "is not an SD1.x model" in message and "no SD1.x UNet keys" in message
    # A config dir without the UNet's config; a single-file teacher without a ControlNet.
    partial = tmp_path / "partial"
    shutil.copytree(files["config"], partial, ignore=shutil.ignore_patterns("unet"))
    argv = ["--teacher", str(files["model"]), "--controlnet", str(files["cn"]), "--teacher-config", str(partial)]
    assert "lacks unet/config.json" in _refused(capsys, tmp_path, *argv)
    with pytest.raises(ConfigError, match="holds no ControlNet"):
        load_teacher(str(files["model"]), teacher_config=str(files["config"]))


def test_a_controlnet_for_another_base_is_refused_before_anything_is_written(files, tmp_path, capsys):
    from diffusers import ControlNetModel

    other = ControlNetModel.from_config({**build_tiny_pipeline().controlnet.config, "cross_attention_dim": 16})
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(tmp_path / "cn16.safetensors"))
    config = tmp_path / "config16"
    shutil.copytree(files["config"], config)
    other.save_config(config / "controlnet")
    argv = ["--teacher", str(files["model"]), "--controlnet", str(tmp_path / "cn16.safetensors")]
    message = _refused(capsys, tmp_path, *argv, "--teacher-config", str(config))
    assert f"the ControlNet {tmp_path / 'cn16.safetensors'} (cross_attention_dim=16) does not fit" in message
    assert "(cross_attention_dim=32)" in message
