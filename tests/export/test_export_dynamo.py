"""The default (dynamo) exporter. Text encoder and VAE decoder are quick; the fused denoiser takes ~40 s on a busy
2-core machine, so the full default export is a slow test."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from refine_control.export.onnx_export import (
    TextEncoderGraph,
    VaeDecoderGraph,
    export_graph,
    load_student,
)
from refine_control.export.spec import SPECS
from refine_control.training.config import read_run_config


def _session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _export_dynamo(student, graph: str, path: Path) -> None:
    geometry = student.geometry
    example = tuple(torch.from_numpy(v) for v in geometry.example_feeds(graph).values())
    spec = SPECS[graph]
    export_graph(
        student.graph_module(graph), example, path, spec, geometry, "dynamo", 18, spec.dynamic_shapes(geometry)
    )


def test_dynamo_text_encoder_and_vae_decoder(exported: dict, tmp_path: Path):
    run = Path(exported["run"])
    student = load_student(run, read_run_config(run))
    _export_dynamo(student, "text_encoder", tmp_path / "text_encoder.onnx")
    _export_dynamo(student, "vae_decoder", tmp_path / "vae_decoder.onnx")
    rng = np.random.default_rng(0)

    ids = rng.integers(0, 49407, (3, 77)).astype(np.int64)  # another batch size than the example's
    with torch.inference_mode():
        ref = TextEncoderGraph(student.pipeline.text_encoder)(torch.from_numpy(ids)).numpy()
    out = _session(tmp_path / "text_encoder.onnx").run(None, {"input_ids": ids})[0]
    assert np.abs(out - ref).max() <= 1e-4

    latents = rng.standard_normal((1, 4, 6, 10)).astype(np.float32)  # batch 1, non-square
    with torch.inference_mode():
        ref = VaeDecoderGraph(student.pipeline.vae)(torch.from_numpy(latents)).numpy()
    out = _session(tmp_path / "vae_decoder.onnx").run(None, {"latent_sample": latents})[0]
    assert out.shape == (1, 3, 12, 20) and np.abs(out - ref).max() <= 1e-4


@pytest.mark.slow
def test_default_export_with_dynamo(exported: dict, tmp_path: Path):
    """`refine-export RUN -o MODEL --int8` with every other option at its default: parity passes, and the fused
    denoiser's divisibility-constrained dynamic axes accept a batch and size the export never saw."""
    from refine_control.export.cli import main

    model = tmp_path / "model"
    assert main([exported["run"], "-o", str(model), "--int8", "--threads", "1", "-q"]) == 0
    report = json.loads((model / "parity.json").read_text())
    assert report["passed"] and report["graphs"]["denoiser"]["fp32"]["max_abs"] <= 1e-3
    manifest = json.loads((model / "manifest.json").read_text())
    assert manifest["export"]["exporter"] == "dynamo"
    shape = manifest["graphs"]["denoiser"]["fp32"]["onnx"]["inputs"][3]["shape"]  # controlnet_cond
    assert all(isinstance(d, str) for d in (shape[0], shape[2], shape[3]))
    rng = np.random.default_rng(2)
    feeds = {
        "sample": rng.standard_normal((3, 4, 8, 12), dtype=np.float32),
        "timestep": np.full((3,), 10.0, np.float32),
        "encoder_hidden_states": rng.standard_normal((3, 77, 32), dtype=np.float32),
        "controlnet_cond": rng.random((3, 3, 16, 24), dtype=np.float32),
        "conditioning_scale": np.asarray(0.5, np.float32),
    }
    assert _session(model / "denoiser.onnx").run(None, feeds)[0].shape == (3, 4, 8, 12)
