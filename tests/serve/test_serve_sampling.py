"""The sampling recommendation as the server and the torch-free runtime read it (no model needed)."""

import logging

import pytest

from refine_control.runtime.model_dir import ModelDir
from refine_control.runtime.sampling import GUIDED_DEFAULT, SamplingRecommendation, recommendation_or_default


def test_recommendation_round_trips_and_rejects_nonsense():
    rec = SamplingRecommendation(4, 3.0, "LCMScheduler", (2.0, 5.0))
    assert SamplingRecommendation.from_json(rec.to_json()) == rec
    assert rec.guidance_error(3.5) is None and "between 2 and 5" in rec.guidance_error(7.5)
    assert SamplingRecommendation(20, 3.0).guidance_error(15.0) is None  # a guided model takes any scale
    for bad in (
        {"steps": 4},
        {"steps": 0, "guidance_scale": 3},
        {"steps": 4, "guidance_scale": 9, "guidance_range": [2, 5]},
        [],
    ):
        with pytest.raises(ValueError, match=r"steps|guidance|JSON object|malformed"):
            SamplingRecommendation.from_json(bad)


def test_a_model_without_a_recommendation_gets_the_documented_default_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        assert recommendation_or_default(None, "old-model") is GUIDED_DEFAULT
    assert "old-model holds no sampling recommendation" in caplog.text
    assert (GUIDED_DEFAULT.steps, GUIDED_DEFAULT.guidance_scale) == (20, 3.0)  # never 20 steps at 7.5


def _model_dir(manifest: dict) -> ModelDir:
    model = ModelDir.__new__(ModelDir)  # only the manifest matters here
    model.manifest = manifest
    model.files = {name: {} for name in manifest["files"]}
    return model


@pytest.mark.parametrize(
    ("files", "quantization", "parity", "expected"),
    [
        (["denoiser.onnx"], {}, True, "fp32"),
        (["denoiser.onnx", "denoiser.int8.onnx"], {"faster_than_fp32": True}, True, "int8"),
        (["denoiser.onnx", "denoiser.int8.onnx"], {"selection": "measured"}, True, "int8"),  # written: it was faster
        (["denoiser.onnx", "denoiser.int8.onnx"], {"faster_than_fp32": False}, True, "fp32"),  # --int8-anyway
        (["denoiser.onnx", "denoiser.int8.onnx"], {"faster_than_fp32": True}, False, "fp32"),  # --allow-degraded
    ],
)
def test_the_default_precision_is_the_fastest_that_passed_parity(files, quantization, parity, expected):
    manifest = {
        "files": {name: {} for name in files},
        "graphs": {"denoiser": {"int8": {"onnx": {"quantization": quantization}}}},
        "export": {"parity_passed": parity},
    }
    assert _model_dir(manifest).fastest_precision() == expected


def test_guidance_outside_the_trained_range_is_422_naming_it():
    from serve_client import make_client
    from serve_fakes import FakeEngine
    from serve_helpers import b64, png_bytes

    engine = FakeEngine()
    engine.guidance_range = (2.0, 5.0)
    with make_client(engine) as client:
        body = {"prompt": "a red circle", "control_image": b64(png_bytes()), "steps": 1}
        bad = client.post("/v1/generate", json={**body, "guidance_scale": 7.5})
        assert bad.status_code == 422 and "between 2 and 5" in bad.json()["detail"]
        assert client.post("/v1/generate", json={**body, "guidance_scale": 3.0}).status_code == 200


def test_more_steps_than_the_models_schedule_has_is_422_and_the_limit_is_published():
    """A few-step student starting at t = 759 has 38 grid timesteps at or below it: the server's own limit (50)
    shrinks to the model's, in `GET /v1/models` and in the 422."""
    from serve_client import make_client
    from serve_fakes import FakeEngine
    from serve_helpers import b64, png_bytes

    engine = FakeEngine()
    engine.max_steps = 38
    with make_client(engine) as client:
        assert client.get("/v1/models").json()["limits"]["max_steps"] == 38
        body = {"prompt": "a red circle", "control_image": b64(png_bytes())}
        bad = client.post("/v1/generate", json={**body, "steps": 39})
        assert bad.status_code == 422 and "at most 38" in bad.json()["detail"]
        assert client.post("/v1/generate", json={**body, "steps": 2}).status_code == 200
