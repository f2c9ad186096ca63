import json
import shutil

import pytest
import torch

from refine_control.errors import ConfigError
from refine_control.models.teacher import load_teacher


def test_loads_a_pipeline_dir_frozen_in_eval_mode(tiny_pipeline_dir):
    teacher = load_teacher(str(tiny_pipeline_dir))
    assert teacher.resolution == 16 and teacher.vae_scale_factor == 2
    for module in teacher.frozen_modules():
        assert not module.training
        assert not any(p.requires_grad for p in module.parameters())
    assert type(teacher.scheduler).__name__ == "DDIMScheduler"
    assert teacher.noise_scheduler().config.num_train_timesteps == 1000


def test_teacher_dtype_follows_the_trainer(tiny_pipeline_dir):
    teacher = load_teacher(str(tiny_pipeline_dir), dtype=torch.bfloat16)
    assert next(teacher.unet.parameters()).dtype == torch.bfloat16
    assert next(teacher.text_encoder.parameters()).dtype == torch.bfloat16


def test_base_pipeline_plus_separate_controlnet(tiny_pipeline_dir, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(tiny_pipeline_dir, base)
    shutil.move(base / "controlnet", tmp_path / "cn")
    with pytest.raises(ConfigError, match="no controlnet/ folder"):
        load_teacher(str(base))
    teacher = load_teacher(str(base), controlnet=str(tmp_path / "cn"))
    assert teacher.controlnet.config.block_out_channels == teacher.unet.config.block_out_channels


def test_hub_id_in_the_local_cache_loads_without_network(tiny_pipeline_dir, tmp_path, monkeypatch):
    # The real huggingface_hub cache layout: models--org--name/{refs/main, snapshots/<rev>/...}.
    repo = tmp_path / "hub" / "models--acme--tiny-controlnet"
    shutil.copytree(tiny_pipeline_dir, repo / "snapshots" / "0123abc")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    teacher = load_teacher("acme/tiny-controlnet")
    assert teacher.path == repo / "snapshots" / "0123abc"


def test_hub_id_not_cached_says_how_to_get_the_weights(tmp_path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="not in the local cache") as err:
        load_teacher("acme/not-here")
    assert "hf download acme/not-here" in err.value.hint


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("no_index", "no model_index.json"),
        ("bad_index", "not valid JSON"),
        ("no_unet", "lacks unet/"),
        ("bad_weights", "could not load the teacher's unet"),
        ("bad_config", "could not load the teacher's vae"),
    ],
)
def test_malformed_teacher_dirs_give_one_clear_error(tiny_pipeline_dir, tmp_path, breakage, message):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_pipeline_dir, broken)
    if breakage == "no_index":
        (broken / "model_index.json").unlink()
    elif breakage == "bad_index":
        (broken / "model_index.json").write_text("{not json")
    elif breakage == "no_unet":
        shutil.rmtree(broken / "unet")
    elif breakage == "bad_weights":
        weights = next((broken / "unet").glob("*.safetensors"))
        weights.write_bytes(weights.read_bytes()[:100])
    elif breakage == "bad_config":
        (broken / "vae" / "config.json").write_text(json.dumps({"block_out_channels": "x"}))
    with pytest.raises(ConfigError, match=message):
        load_teacher(str(broken))


def test_unknown_teacher_spec(tmp_path):
    with pytest.raises(ConfigError, match="neither an existing directory nor a hub id"):
        load_teacher(str(tmp_path / "missing" / "dir"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        load_teacher(str(tmp_path / "file"))


def _pickle_only(tiny_pipeline_dir, tmp_path, component="unet"):
    """A copy of the tiny teacher whose `component` weights exist only as a pickle file (diffusers' .bin)."""
    from diffusers import UNet2DConditionModel

    teacher = tmp_path / "pickled"
    shutil.copytree(tiny_pipeline_dir, teacher)
    for path in (teacher / component).glob("*.safetensors"):
        path.unlink()
    unet = UNet2DConditionModel.from_pretrained(tiny_pipeline_dir / component)
    unet.save_pretrained(teacher / component, safe_serialization=False)
    assert sorted(p.suffix for p in (teacher / component).iterdir()) == [".bin", ".json"]
    return teacher


def test_pickle_weights_are_refused_unless_allowed(tiny_pipeline_dir, tmp_path):
    from refine_control.models.teacher import pickle_weights_allowed

    teacher = _pickle_only(tiny_pipeline_dir, tmp_path)
    with pytest.raises(
        ConfigError, match=r"teacher's unet .* has only pickle weights \(diffusion_pytorch_model\.bin\)"
    ):
        load_teacher(str(teacher))
    reference = load_teacher(str(tiny_pipeline_dir))
    for loaded in (load_teacher(str(teacher), allow_pickle_weights=True), None):
        if loaded is None:
            with pickle_weights_allowed():
                loaded = load_teacher(str(teacher))
        for a, b in zip(loaded.unet.parameters(), reference.unet.parameters(), strict=True):
            assert torch.equal(a, b)


def test_distill_refuses_a_pickle_teacher_without_unpickling(tiny_pipeline_dir, tiny_data, tmp_path, capsys):
    """The CLI ends with one `error:` line naming the flag (exit 2); a booby-trapped pickle never runs."""
    import pickle

    from refine_control.cli import main

    teacher = _pickle_only(tiny_pipeline_dir, tmp_path)
    canary = tmp_path / "canary"

    class Trap:
        def __reduce__(self):
            return (open, (str(canary), "w"))

    (teacher / "unet" / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps(Trap()))
    labelled, _ = tiny_data
    args = ["--teacher", str(teacher), "--labelled", str(labelled), "--output-dir", str(tmp_path / "run")]
    assert main([*args, "--student", "compact-small", "--max-steps", "1", "-q"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith(("error:", "hint:"))]
    assert (
        len(lines) == 2 and lines[0].startswith("error: the teacher's unet") and "--allow-pickle-weights" in lines[1]
    )
    assert not canary.exists()
