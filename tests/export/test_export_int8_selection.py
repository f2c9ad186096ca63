"""INT8 chosen per node: a node made sensitive stays FP32, the CPU-dependent setting, the positional rules."""

from pathlib import Path

import numpy as np
import pytest

from refine_control.export.int8_sensitivity import protected_nodes
from refine_control.export.quantize import Int8Options, quantize_int8
from refine_control.runtime.cpu import CpuInfo, decide_reduce_range, int8_cpu_warning

CHANNELS, SIDE = 8, 16
CONVS = ["conv1", "conv2", "conv3", "conv4", "conv5"]


def conv_chain(path: Path, outlier: float) -> None:
    """sample → conv1 → conv2 → ×scale → conv3 → conv4 → conv5. The scale multiplies channel 0 by `outlier`
    (ORT's pre-processing folds it into conv2) and conv3 ignores channel 0: with an outlier, the uint8 range of
    conv2's output / conv3's input is set by a channel conv3 does not use, and what it reads is lost. conv4 is
    ordinary."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits, nodes = [], []
    previous = "sample"
    for name in CONVS:
        weight = (rng.standard_normal((CHANNELS, CHANNELS, 3, 3)) / np.sqrt(9 * CHANNELS)).astype(np.float32)
        if name == "conv3":
            weight[:, 0] = 0.0
        inits += [
            numpy_helper.from_array(weight, f"{name}.w"),
            numpy_helper.from_array(np.zeros(CHANNELS, np.float32), f"{name}.b"),
        ]
        nodes.append(
            helper.make_node("Conv", [previous, f"{name}.w", f"{name}.b"], [f"{name}.y"], name=name, pads=[1] * 4)
        )
        previous = f"{name}.y"
        if name == "conv2":
            scale = np.ones((1, CHANNELS, 1, 1), np.float32)
            scale[0, 0] = outlier
            inits.append(numpy_helper.from_array(scale, "scale"))
            nodes.append(helper.make_node("Mul", [previous, "scale"], ["scaled"], name="scale_mul"))
            previous = "scaled"
    shape = [1, CHANNELS, SIDE, SIDE]
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("sample", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(previous, TensorProto.FLOAT, shape)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))


def run(path: Path, feeds: list[dict]) -> list[np.ndarray]:
    from refine_control.runtime.session import ort_session

    session = ort_session(path, threads=1)
    return [session.run(None, f)[0] for f in feeds]


def select(tmp_path: Path, outlier: float) -> tuple[dict, Path]:
    fp32, out = tmp_path / "chain.onnx", tmp_path / "chain.int8.onnx"
    conv_chain(fp32, outlier)
    rng = np.random.default_rng(1)
    feeds = [{"sample": rng.standard_normal((1, CHANNELS, SIDE, SIDE)).astype(np.float32)} for _ in range(6)]
    reference = run(fp32, feeds)

    def check(candidate: Path) -> dict:  # the test's judge: output error relative to the output's spread
        error = max(float(np.abs(a - b).max()) for a, b in zip(run(candidate, feeds), reference, strict=True))
        relative = error / float(np.std(np.concatenate([r.ravel() for r in reference])))
        return {"relative_error": relative, "accepted": relative <= 0.1}

    # Speed is not what this test is about (a graph this small is overhead-bound): any set may be chosen.
    options = Int8Options(calibration="minmax", min_speedup=0.0)
    report = quantize_int8(fp32, out, feeds, feeds[0], check=check, options=options, threads=1)
    return report, out


def quantized_convs(path: Path) -> set[str]:
    """Convs whose weight is int8 (read through a DequantizeLinear) in the written QDQ graph."""
    import onnx

    graph = onnx.load(str(path)).graph
    producers = {o: n for n in graph.node for o in n.output}
    return {
        n.name
        for n in graph.node
        if n.op_type == "Conv"
        and producers.get(n.input[1]) is not None
        and producers[n.input[1]].op_type == "DequantizeLinear"
    }


def test_a_sensitive_node_stays_fp32(tmp_path: Path):
    report, out = select(tmp_path, outlier=1000.0)
    assert report["written"] and out.is_file()
    assert report["protected"] == {"first convolution": 1, "last compute node": 1}  # conv1, conv5
    worst = [name for name, _, _ in report["sensitivity"]["worst"]]
    assert set(worst[:2]) == {"conv2", "conv3"}  # ranked worst by the error each adds on its own
    assert [c["quantized_nodes"] for c in report["candidates"]] == [3, 2, 1]
    assert report["candidates"][1]["check"]["accepted"] is False  # quantise either and the output breaks
    assert quantized_convs(out) == {"conv4"}


def test_without_the_outlier_every_ranked_node_may_be_quantised(tmp_path: Path):
    """The control: the same chain with an ordinary scale; the set with conv3 passes the same judge."""
    report, out = select(tmp_path, outlier=1.0)
    full = report["candidates"][0]
    assert full["quantized_nodes"] == 3 and full["check"]["accepted"] is True
    assert report["written"] and quantized_convs(out) <= {"conv2", "conv3", "conv4"}


def test_no_int8_file_when_no_set_is_faster_unless_anyway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from refine_control.export import quantize

    monkeypatch.setattr(quantize, "RESIDENT_BYTES", 0)  # time the candidates one at a time, as at SD1.5 size
    fp32 = tmp_path / "chain.onnx"
    conv_chain(fp32, 1.0)
    feeds = [{"sample": np.ones((1, CHANNELS, SIDE, SIDE), np.float32)}]

    def accept(candidate: Path) -> dict:
        return {"accepted": True}

    impossible = Int8Options(calibration="minmax", min_speedup=1e9)  # no set can be a billion times faster
    report = quantize_int8(fp32, tmp_path / "a.onnx", feeds, feeds[0], check=accept, options=impossible, threads=1)
    assert report["written"] is False and not (tmp_path / "a.onnx").exists() and report["faster_than_fp32"] is False
    anyway = Int8Options(calibration="minmax", min_speedup=1e9, anyway=True)
    report = quantize_int8(fp32, tmp_path / "b.onnx", feeds, feeds[0], check=accept, options=anyway, threads=1)
    assert report["written"] is True and (tmp_path / "b.onnx").is_file() and report["faster_than_fp32"] is False


def test_control_path_and_ends_are_protected(tmp_path: Path):
    """The positional rules on a two-input graph: the control branch until it meets the latent stays FP32."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.zeros((4, 4, 1, 1), np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["controlnet_cond", "w"], ["c1"], name="control_conv"),
        helper.make_node("Conv", ["sample", "w"], ["s1"], name="latent_in"),
        helper.make_node("Add", ["c1", "s1"], ["m"], name="merge"),
        helper.make_node("Conv", ["m", "w"], ["m1"], name="middle"),
        helper.make_node("Conv", ["m1", "w"], ["out"], name="latent_out"),
    ]
    value = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4, 4, 4]) for n in ("controlnet_cond", "sample")]
    graph = helper.make_graph(nodes, "g", value, [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], [w])
    model = helper.make_model(graph)
    names = ["control_conv", "latent_in", "middle", "latent_out"]
    assert protected_nodes(model, names, "controlnet_cond", "sample") == {
        "control_conv": "control-conditioning path",
        "latent_in": "first convolution",
        "latent_out": "last compute node",
    }


@pytest.mark.parametrize(
    ("choice", "cpu", "expected"),
    [
        ("auto", CpuInfo("x86_64", "no-vnni", False), True),
        ("auto", CpuInfo("x86_64", "vnni", True), False),
        ("auto", CpuInfo("x86_64", "unknown", None), True),
        ("auto", CpuInfo("aarch64", "arm", None), False),
        ("on", CpuInfo("x86_64", "vnni", True), True),
        ("off", CpuInfo("x86_64", "no-vnni", False), False),
    ],
)
def test_reduce_range_follows_the_cpu(choice: str, cpu: CpuInfo, expected: bool):
    reduce_range, reason = decide_reduce_range(choice, cpu)
    assert reduce_range is expected and reason


def test_runtime_warns_when_the_serving_cpu_needs_reduce_range():
    record = {"reduce_range": False, "cpu": {"model": "Xeon with VNNI"}}
    warning = int8_cpu_warning(record, CpuInfo("x86_64", "old laptop", False))
    assert warning and "reduce_range" in warning and "old laptop" in warning and "Xeon with VNNI" in warning
    assert int8_cpu_warning(record, CpuInfo("x86_64", "new", True)) is None
    assert int8_cpu_warning({"reduce_range": True}, CpuInfo("x86_64", "old laptop", False)) is None
    assert int8_cpu_warning(record, CpuInfo("aarch64", "phone", None)) is None
