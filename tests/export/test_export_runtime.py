"""The torch-free runtime on the exported tiny model: no torch, determinism, progress and cancel, and every way a
model dir can be broken or unsafe (one clear error naming the file; exit code 2 from the runtime's CLI)."""

import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from refine_control.errors import ConfigError
from refine_control.runtime import CancelledError, ModelDir, ModelDirError, OnnxControlNetPipeline
from refine_control.runtime.__main__ import main as runtime_main
from refine_control.runtime.onnx_proto import ProtoError, read_model_facts

TORCH_FREE_SCRIPT = """
import json, sys
for name in ("torch", "diffusers", "transformers", "onnx", "accelerate"):
    sys.modules[name] = None  # any import of these now raises ImportError
import numpy as np
from refine_control.runtime import OnnxControlNetPipeline

control = np.zeros((16, 16, 3), np.float32)
control[4:12, 4] = control[4, 4:12] = 1.0
out = {}
for precision in ("fp32", "int8"):
    pipe = OnnxControlNetPipeline(sys.argv[1], precision, num_threads=1)
    steps = []
    a = pipe("a red square", control, steps=3, seed=7, callback=lambda done, total: steps.append((done, total)))
    b = pipe("a red square", control, steps=3, seed=7)
    c = pipe("a red square", control, steps=3, seed=8)
    out[precision] = {"same_seed_equal": bool((a == b).all()), "other_seed_differs": bool((a != c).any()),
                      "shape": list(a.shape), "dtype": str(a.dtype), "steps": steps}
loaded = sorted(m for m, v in sys.modules.items() if v is not None and m.split(".")[0] in ("torch", "diffusers", "transformers", "onnx"))
print(json.dumps({"results": out, "loaded": loaded}))
"""


@pytest.fixture(scope="module")
def model(exported: dict) -> Path:
    assert exported["code"] == 0, exported["stdout"]
    return exported["model"]


def _control() -> np.ndarray:
    control = np.zeros((16, 16, 3), np.float32)
    control[3:13, 8] = 1.0
    return control


def test_runtime_runs_where_torch_cannot_be_imported(model: Path):
    proc = subprocess.run(
        [sys.executable, "-c", TORCH_FREE_SCRIPT, str(model)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["loaded"] == []
    for result in report["results"].values():
        assert result["same_seed_equal"] and result["other_seed_differs"]
        assert result["shape"] == [16, 16, 3] and result["dtype"] == "uint8"
        assert result["steps"] == [[1, 3], [2, 3], [3, 3]]


def test_cancel_stops_between_steps(model: Path):
    pipe = OnnxControlNetPipeline(model, num_threads=1)
    cancel = threading.Event()
    seen = []

    def progress(done: int, total: int) -> None:
        seen.append(done)
        if done == 2:
            cancel.set()

    with pytest.raises(CancelledError, match="before step 3 of 5"):
        pipe("x", _control(), steps=5, callback=progress, cancel=cancel)
    assert seen == [1, 2]


def test_every_scheduler_and_format_runs(model: Path):
    images = {}
    for scheduler in ("ddim", "euler", "euler_ancestral", "lcm"):
        pipe = OnnxControlNetPipeline(model, scheduler=scheduler, model_format="ort", num_threads=1)
        images[scheduler] = pipe("a", _control(), steps=2, guidance_scale=1.0, seed=3)
        assert images[scheduler].shape == (16, 16, 3)
    pipe = OnnxControlNetPipeline(model, num_threads=1)
    assert pipe.info()["scheduler"] == "ddim" and pipe.available_precisions == ["fp32", "int8", "fp16"]
    # A uint8 control of another size is resized; width/height must fit the model's size multiple.
    assert pipe("a", (np.ones((40, 24, 3)) * 255).astype(np.uint8), steps=1, width=8, height=12).shape == (12, 8, 3)
    with pytest.raises(ConfigError, match="multiple of 4"):
        pipe("a", _control(), steps=1, width=10)


def test_missing_precision_lists_what_exists(model: Path, tmp_path: Path):
    with pytest.raises(ModelDirError, match=r"no fp16 denoiser in ort format|available"):
        OnnxControlNetPipeline(_copy_without(model, tmp_path, "denoiser.fp16.ort"), "fp16", model_format="ort")


def _copy_without(model: Path, tmp_path: Path, name: str) -> Path:
    import shutil

    out = Path(shutil.copytree(model, tmp_path / "partial"))
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["files"][name]
    (out / name).unlink()
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


# ----------------------------------------------------------------------------------------- damaged model dirs
def _rehash(model: Path, *names: str) -> None:
    manifest = json.loads((model / "manifest.json").read_text())
    for name in names:
        data = (model / name).read_bytes()
        manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (model / "manifest.json").write_text(json.dumps(manifest))


def _run_cli(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> tuple[int, list[str]]:
    from PIL import Image

    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "control.png")
    # FP32 named: "auto" may pick an INT8 denoiser (when the export measured it faster), not the file damaged here.
    argv = [str(model), "--control", str(tmp_path / "control.png"), "-o", str(tmp_path / "o.png")]
    code = runtime_main([*argv, "--precision", "fp32"])
    return code, [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]


def test_corrupted_file_is_named(model_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    data = bytearray((model_copy / "denoiser.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (model_copy / "denoiser.onnx").write_bytes(bytes(data))
    code, errors = _run_cli(model_copy, tmp_path, capsys)
    assert code == 2
    assert errors == ["error: model file denoiser.onnx is corrupted: its sha256 does not match the manifest"]


@pytest.mark.parametrize("source", ["garbage", "onnx", "foreign"])
def test_corrupt_or_foreign_ort_file_is_refused_by_name(model_copy: Path, tmp_path: Path, capsys, source: str):
    """A `.ort` file that is not ORT format, an ONNX file renamed, or another graph's `.ort`: even with the manifest's
    hash made to match, loading stops with one error naming the file."""
    target = model_copy / "denoiser.ort"
    data = {
        "garbage": b"\x00\x01not a flatbuffer" * 64,
        "onnx": (model_copy / "denoiser.onnx").read_bytes(),
        "foreign": (model_copy / "vae_decoder.ort").read_bytes(),
    }[source]
    target.write_bytes(data)
    _rehash(model_copy, "denoiser.ort")
    with pytest.raises(ModelDirError, match=r"denoiser\.ort"):
        OnnxControlNetPipeline(model_copy, model_format="ort", num_threads=1)


def test_int8_model_warns_on_a_cpu_that_needs_reduce_range(model_copy: Path, monkeypatch, caplog):
    """A model quantised for a VNNI CPU (reduce_range off), loaded where there is no VNNI: a warning names the
    setting. (This machine's CPU is replaced by a description of one without VNNI.)"""
    import logging

    from refine_control.runtime import cpu

    manifest = json.loads((model_copy / "manifest.json").read_text())
    record = manifest["graphs"]["denoiser"]["int8"]["onnx"]["quantization"]
    record["reduce_range"], record["cpu"] = False, {"model": "a CPU with VNNI"}
    (model_copy / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setattr(cpu, "cpu_info", lambda: cpu.CpuInfo("x86_64", "a CPU without VNNI", False))
    with caplog.at_level(logging.WARNING):
        OnnxControlNetPipeline(model_copy, "fp32", num_threads=1)
        assert not caplog.records  # FP32 has nothing to warn about
        OnnxControlNetPipeline(model_copy, "int8", num_threads=1)
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "reduce_range" in warning and "a CPU without VNNI" in warning and "--int8-reduce-range on" in warning


def test_truncated_file_is_named(model_copy: Path):
    path = model_copy / "vae_decoder.onnx"
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[: size // 3])
    with pytest.raises(
        ModelDirError, match=rf"vae_decoder.onnx is truncated: {size // 3} bytes, the manifest says {size}"
    ):
        OnnxControlNetPipeline(model_copy)


def test_missing_file_and_missing_manifest(model_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    (model_copy / "tokenizer" / "tokenizer.json").unlink()
    with pytest.raises(ModelDirError, match=r"tokenizer/tokenizer\.json is missing"):
        OnnxControlNetPipeline(model_copy)
    (model_copy / "manifest.json").unlink()
    code, errors = _run_cli(model_copy, tmp_path, capsys)
    assert code == 2 and "has no manifest.json" in errors[0]


@pytest.mark.parametrize("complete", [None, False, "true"])
def test_manifest_not_marked_complete_is_refused(model_copy: Path, complete):
    """Only the manifest written last by a finished export says `"complete": true` (an interrupted or older export
    does not), and the runtime loads nothing else."""
    manifest = json.loads((model_copy / "manifest.json").read_text())
    assert manifest["complete"] is True and manifest["export"]["parity_passed"] is True
    if complete is None:
        del manifest["complete"]
    else:
        manifest["complete"] = complete
    (model_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelDirError, match="is not marked complete: an interrupted export"):
        OnnxControlNetPipeline(model_copy)


def test_manifest_with_unsafe_names_is_refused(model_copy: Path):
    manifest = json.loads((model_copy / "manifest.json").read_text())
    manifest["files"]["../escape.onnx"] = {"sha256": "0" * 64, "bytes": 1}
    (model_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelDirError, match="unsafe file name"):
        ModelDir(model_copy)


def _externalise(model: Path, location: str, data_path: Path) -> None:
    """Move the vae decoder's largest initializer to external data at `location` (written to `data_path`)."""
    import onnx

    path = model / "vae_decoder.onnx"
    proto = onnx.load(str(path))
    tensor = max(proto.graph.initializer, key=lambda t: len(t.raw_data))
    data_path.parent.mkdir(parents=True, exist_ok=True)
    data_path.write_bytes(tensor.raw_data)
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    del tensor.external_data[:]
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", location
    onnx.save(proto, str(path))


@pytest.mark.parametrize("location", ["../outside.bin", "sub/../../outside.bin", "/etc/passwd"])
def test_external_data_outside_the_model_dir_is_refused(model_copy: Path, location: str):
    target = Path(location) if location.startswith("/") else (model_copy / location)
    if not location.startswith("/"):
        _externalise(model_copy, location, target.resolve())
    else:
        _externalise(model_copy, location, model_copy.parent / "unused.bin")
    _rehash(model_copy, "vae_decoder.onnx")  # a manifest that matches: the location check alone must refuse it
    with pytest.raises(ModelDirError, match="outside the model dir; refusing to load it"):
        OnnxControlNetPipeline(model_copy)


def test_external_data_inside_the_model_dir_loads(model_copy: Path, model: Path):
    _externalise(model_copy, "weights/vae.bin", model_copy / "weights" / "vae.bin")
    _rehash(model_copy, "vae_decoder.onnx")
    with pytest.raises(ModelDirError, match=r"weights/vae\.bin is not listed"):
        OnnxControlNetPipeline(model_copy)
    _rehash(model_copy, "vae_decoder.onnx", "weights/vae.bin")
    image = OnnxControlNetPipeline(model_copy, num_threads=1)("a", _control(), steps=2, seed=1)
    assert np.array_equal(image, OnnxControlNetPipeline(model, num_threads=1)("a", _control(), steps=2, seed=1))
    os.link(model_copy / "weights" / "vae.bin", model_copy / "weights" / "hardlink.bin")
    with pytest.raises(ModelDirError, match="hard-linked"):
        OnnxControlNetPipeline(model_copy)


def test_symlinked_model_file_is_refused(model_copy: Path):
    real = model_copy / "denoiser.onnx"
    moved = model_copy.parent / "elsewhere.onnx"
    real.rename(moved)
    real.symlink_to(moved)
    with pytest.raises(ModelDirError, match="not a regular file"):
        OnnxControlNetPipeline(model_copy)


def test_custom_operator_domains_are_refused(model_copy: Path):
    import onnx

    path = model_copy / "vae_decoder.onnx"
    proto = onnx.load(str(path))
    proto.graph.node[0].domain = "evil.ops"
    proto.opset_import.add(domain="evil.ops", version=1)
    onnx.save(proto, str(path))
    _rehash(model_copy, "vae_decoder.onnx")
    with pytest.raises(ModelDirError, match=r"custom operator domains \['evil.ops'\]"):
        OnnxControlNetPipeline(model_copy)


def test_model_facts_reader(model: Path):
    facts = read_model_facts((model / "denoiser.int8.onnx").read_bytes())
    assert facts.external == [] and "" in facts.node_domains
    data = (model / "denoiser.onnx").read_bytes()
    with pytest.raises(ProtoError):
        read_model_facts(data[: len(data) // 2])
