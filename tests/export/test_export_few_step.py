"""Export of a few-step, guidance-distilled student (`refine-distill --from RUN --few-step`, then --tiny-decoder;
the `few_step_model` fixture of tests/conftest.py): the denoiser graph takes the guidance scale as an input, the
runtime samples it with its numpy LCM scheduler in one batch-1 pass per step, and the manifest carries the
student's recommended steps."""

import json

import numpy as np
import pytest
import torch

from refine_control.export.onnx_export import load_student
from refine_control.runtime import OnnxControlNetPipeline
from refine_control.runtime.session import ort_session
from refine_control.training.config import read_run_config


def test_manifest_records_guidance_input_and_recommended_steps(few_step_model):
    _, model = few_step_model
    manifest = json.loads((model / "manifest.json").read_text())
    facts = manifest["pipeline"]
    assert facts["guidance_embedding_dim"] == 256 and facts["recommended_sampling"] == {
        "steps": 2,
        "guidance_scale": 3.0,
        "scheduler": "LCMScheduler",
        "guidance_range": [2.0, 5.0],
        "first_timestep": 759,
    }
    assert facts["scheduler"] == "LCMScheduler"
    for precision in ("fp32", "int8"):
        inputs = manifest["graphs"]["denoiser"][precision]["onnx"]["inputs"]
        assert [i["name"] for i in inputs][-1] == "guidance_scale" and len(inputs) == 6
        assert isinstance(inputs[-1]["shape"][0], str)  # a dynamic batch axis
    parity = json.loads((model / "parity.json").read_text())
    # The recommendation drove parity too: PyTorch sampled diffusers' LCMScheduler from t = 759 (`timesteps=`).
    assert parity["passed"] and parity["settings"]["steps"] == 2
    assert manifest["export"]["exporter"] == "dynamo"


def test_guidance_input_matches_pytorch_at_several_scales(few_step_model):
    """The exported denoiser reads the scale like the PyTorch one (diffusers' w-embedding inside the graph)."""
    run, model = few_step_model
    student = load_student(run, read_run_config(run))
    geometry = student.geometry
    session = ort_session(model / "denoiser.onnx", threads=1)
    denoiser = student.denoiser()
    outputs = []
    for scale in (1.5, 4.0, 8.0):
        feeds = geometry.example_feeds("denoiser", batch=3)  # not the example batch the export traced
        feeds["guidance_scale"] = np.full((3,), scale, np.float32)
        with torch.inference_mode():
            ref = denoiser(*(torch.from_numpy(feeds[k]) for k in geometry.inputs("denoiser"))).numpy()
        out = session.run(None, feeds)[0]
        assert np.abs(out - ref).max() <= 1e-4
        outputs.append(out)
    # The scale reaches the output (the projection trained away from its zero start).
    assert np.abs(outputs[0] - outputs[2]).max() > 1e-7


def test_runtime_samples_in_one_batch1_pass_per_step(few_step_model):
    _, model = few_step_model
    pipe = OnnxControlNetPipeline(model, num_threads=1)
    assert pipe.scheduler_name == "lcm" and pipe.default_steps == 2 and pipe.info()["guidance_embedded"]
    assert pipe.new_scheduler(2).timesteps.tolist() == [759, 379]  # from the recommended first timestep
    assert pipe.new_scheduler(4).timesteps.tolist() == [759, 579, 379, 199]
    assert pipe.max_steps == 38  # the grid 759, 739, ..., 19
    seen: list[dict[str, np.ndarray]] = []
    run_graph = pipe.run_graph

    def record(graph, feeds):
        if graph == "denoiser":
            seen.append(feeds)
        return run_graph(graph, feeds)

    pipe.run_graph = record
    control = np.zeros((16, 16, 3), np.uint8)
    image = pipe("a red square", control, guidance_scale=5.0, seed=1)
    assert image.shape == (16, 16, 3) and len(seen) == 2  # the recommended 2 steps
    assert all(f["sample"].shape[0] == 1 and f["guidance_scale"].tolist() == [5.0] for f in seen)
    more = []
    pipe.run_graph = lambda graph, feeds: (more.append(graph), run_graph(graph, feeds))[1]
    pipe("a red square", control, steps=4, seed=1)  # a request may still ask for more steps
    assert more.count("denoiser") == 4


def test_every_runtime_consumer_defaults_to_the_recommendation_and_keeps_to_its_range(few_step_model, tmp_path):
    """OnnxControlNetPipeline and `python -m refine_control.runtime` sample as the manifest recommends; a
    scale outside the trained range is refused with the range named."""
    from refine_control.errors import ConfigError
    from refine_control.runtime.__main__ import main as runtime_main

    _, model = few_step_model
    pipe = OnnxControlNetPipeline(model, num_threads=1)
    assert (pipe.default_steps, pipe.default_guidance_scale) == (2, 3.0)
    assert pipe.info()["guidance_range"] == [2.0, 5.0]
    control = np.zeros((16, 16, 3), np.uint8)
    steps: list[int] = []
    pipe("a red circle", control, callback=lambda done, total: steps.append(total))
    assert steps == [2, 2]
    with pytest.raises(ConfigError, match="between 2 and 5"):
        pipe("a red circle", control, guidance_scale=7.5)
    from PIL import Image

    Image.fromarray(control).save(tmp_path / "control.png")
    argv = [str(model), "--control", str(tmp_path / "control.png"), "-o", str(tmp_path / "out.png"), "-q"]
    assert runtime_main(argv) == 0  # no --steps / --guidance-scale: the recommendation, within range
    assert runtime_main([*argv, "--guidance-scale", "7.5"]) == 2
