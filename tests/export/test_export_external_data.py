"""Graphs too large for one protobuf (over 2 GiB, e.g. an SD1.5-size denoiser that keeps the teacher's UNet) are
written with ONNX external data. The threshold is lowered here so that the tiny student takes the same path:
export, INT8, manifest hashes, parity and the runtime all handle the weights beside the graph."""

import json
from pathlib import Path

import numpy as np
import pytest

from refine_control.export import onnx_export


@pytest.mark.slow
def test_an_export_with_external_data_passes_parity_and_loads(tiny_run_dir: Path, tmp_path: Path, monkeypatch):
    """The default dynamo exporter with --int8; about a minute on 2 busy cores."""
    import onnx

    from refine_control.export.cli import main
    from refine_control.runtime import OnnxControlNetPipeline

    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_BYTES", 0)
    model = tmp_path / "model"
    argv = [str(tiny_run_dir), "-o", str(model), "--int8", "--int8-anyway", "--calibration-samples", "1",
            "--parity-samples", "1", "--steps", "2", "--threads", "1", "-q"]  # fmt: skip
    assert main(argv) == 0
    assert json.loads((model / "parity.json").read_text())["passed"] is True
    external = {}
    for name in ("text_encoder.onnx", "denoiser.onnx", "vae_decoder.onnx"):
        graph = onnx.load(str(model / name), load_external_data=False).graph
        external[name] = [t.name for t in graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert all(external.values()), external  # each FP32 graph keeps its weights beside it
    manifest = json.loads((model / "manifest.json").read_text())
    listed = json.dumps(manifest)
    data_files = [p.name for p in model.iterdir() if p.is_file() and p.suffix not in (".onnx", ".json")]
    assert data_files and all(name in listed for name in data_files), (data_files, manifest)
    pipe = OnnxControlNetPipeline(model, "auto", num_threads=1)
    image = pipe("a red square", np.zeros((16, 16, 3), np.uint8), steps=2)
    assert image.shape == (16, 16, 3)
