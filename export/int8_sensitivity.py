"""Which denoiser nodes INT8 hurts: the error each node's own quantisation adds to its output, and the nodes kept
in FP32 by position.

Local error, measured in one pass: every candidate node of the all-quantised QDQ model is copied into the FP32
graph together with its own QuantizeLinear/DequantizeLinear inputs and output (the calibrated scales, the int8
weights), fed the FP32 model's activations, and its output compared with the FP32 node's output, channel by
channel. That is the error the node alone would add, free of the errors of the nodes before it (like the "qdq_err"
of onnxruntime.quantization.qdq_loss_debug, but at the node's output and per channel, where a channel drowned by an
outlier channel's range is seen). Statistics are accumulated feed by feed, so memory stays at one feed's
activations. Ranking layers by sensitivity and keeping the worst in higher precision is MixDQ's idea ("MixDQ",
arXiv 2405.17873); ranges from inputs captured along the whole sampling trajectory follow Q-Diffusion (arXiv
2302.04304). The measure and the rules here are this project's reconstruction, not either paper's procedure.

Positional rules (kept FP32 whatever their measured error): the first convolutions (no convolution before them),
the last compute nodes (no candidate after them), and the control-conditioning path (nodes that read the control
image before it meets the latent).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from refine_control.runtime.session import ort_session

Feeds = dict[str, np.ndarray]
COPY_SUFFIX = "__int8_local"


def protected_nodes(model: Any, candidates: Sequence[str], control_input: str, latent_input: str) -> dict[str, str]:
    """Candidate node name → why it stays FP32 (positional rules of the module docstring)."""
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    reaches: dict[str, set[str]] = {i.name: {i.name} for i in graph.input}  # tensor → graph inputs behind it
    conv_before: dict[str, bool] = {}
    node_inputs: dict[str, set[str]] = {}
    for node in graph.node:  # ONNX graphs are topologically sorted
        sources: set[str] = set()
        after_conv = False
        for name in node.input:
            sources |= reaches.get(name, set())
            producer = producers.get(name)
            after_conv |= producer is not None and (producer.op_type == "Conv" or conv_before[producer.name])
        node_inputs[node.name] = sources
        conv_before[node.name] = after_conv
        for out in node.output:
            reaches[out] = sources
    candidate_set = set(candidates)
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    candidate_after: dict[str, bool] = {}
    for node in reversed(graph.node):
        candidate_after[node.name] = any(
            c.name in candidate_set or candidate_after[c.name] for out in node.output for c in consumers.get(out, [])
        )
    reasons = {}
    for node in graph.node:
        if node.name not in candidate_set:
            continue
        sources = node_inputs[node.name]
        if control_input in sources and latent_input not in sources:
            reasons[node.name] = "control-conditioning path"
        elif node.op_type == "Conv" and not conv_before[node.name]:
            reasons[node.name] = "first convolution"
        elif not candidate_after[node.name]:
            reasons[node.name] = "last compute node"
    return reasons


def _local_error_model(pre: Path, qdq: Path, nodes: Sequence[str]) -> tuple[Any, dict[str, tuple[str, str]]]:
    """The FP32 graph plus a quantised copy of each node in `nodes`; node → (FP32 output, copy's output)."""
    import onnx

    float_model = onnx.load(str(pre))
    quant_model = onnx.load(str(qdq))
    q_nodes = {n.name: n for n in quant_model.graph.node}
    q_producers = {out: n for n in quant_model.graph.node for out in n.output}
    q_inits = {t.name: t for t in quant_model.graph.initializer}
    have = {t.name for t in float_model.graph.initializer}
    float_tensors = have | {i.name for i in float_model.graph.input}
    float_tensors |= {out for n in float_model.graph.node for out in n.output}
    added_nodes: list[Any] = []
    pairs: dict[str, tuple[str, str]] = {}

    def copy_input(name: str, tag: str) -> str:
        """The quantised model's tensor `name`, rebuilt in the FP32 graph (Q/DQ chains copied, renamed)."""
        if name in float_tensors or name == "":
            return name
        producer = q_producers.get(name)
        if producer is None:  # an initializer of the quantised model (int8 weights, scales, zero points)
            if name not in have:
                float_model.graph.initializer.append(q_inits[name])
                have.add(name)
            return name
        renamed = f"{name}{COPY_SUFFIX}_{tag}"
        clone = onnx.NodeProto()
        clone.CopyFrom(producer)
        clone.name = f"{producer.name}{COPY_SUFFIX}_{tag}"
        clone.input[:] = [copy_input(i, tag) for i in producer.input]
        clone.output[:] = [renamed]
        added_nodes.append(clone)
        return renamed

    q_consumers: dict[str, list[Any]] = {}
    for n in quant_model.graph.node:
        for i in n.input:
            q_consumers.setdefault(i, []).append(n)

    def clone_node(node: Any, inputs: list[str], output: str) -> str:
        clone = onnx.NodeProto()
        clone.CopyFrom(node)
        clone.name = f"{node.name}{COPY_SUFFIX}_{output}"
        clone.input[:] = inputs
        clone.output[:] = [output]
        added_nodes.append(clone)
        return output

    for index, name in enumerate(nodes):
        node = q_nodes[name]
        tag = str(index)
        result = clone_node(node, [copy_input(i, tag) for i in node.input], f"{node.output[0]}{COPY_SUFFIX}")
        # ORT's QDQ Conv/MatMul/Gemm also quantise their output: include that Q → DQ pair in the node's error.
        quantize = next((c for c in q_consumers.get(node.output[0], []) if c.op_type == "QuantizeLinear"), None)
        if quantize is not None:
            q_out = clone_node(quantize, [result, *(copy_input(i, tag) for i in quantize.input[1:])], f"{result}_q")
            dequantize = next(c for c in q_consumers[quantize.output[0]] if c.op_type == "DequantizeLinear")
            inputs = [q_out, *(copy_input(i, tag) for i in dequantize.input[1:])]
            result = clone_node(dequantize, inputs, f"{result}_dq")
        pairs[name] = (node.output[0], result)
    float_model.graph.node.extend(added_nodes)
    existing = {o.name for o in float_model.graph.output}
    for reference, quantised in pairs.values():
        for tensor in (reference, quantised):
            if tensor not in existing:
                float_model.graph.output.append(onnx.helper.make_empty_tensor_value_info(tensor))
                existing.add(tensor)
    return float_model, pairs


@dataclass(frozen=True)
class NodeCost:
    error: float  # relative error its own quantisation adds to its output (RMS over channels of ‖e_c‖ / ‖y_c‖)
    macs: int  # multiply-accumulates per run on the first feed (output elements × weight fan-in)

    @property
    def error_per_gmac(self) -> float:
        return self.error / max(self.macs, 1) * 1e9


def _fan_in(node: Any, initializers: dict[str, Any]) -> int:
    """Multiply-accumulates per output element: the weight's elements per output channel (Conv: Cin/g·kh·kw;
    MatMul/Gemm: K)."""
    weight = initializers.get(node.input[1]) if len(node.input) > 1 else None
    if weight is None:
        return 1
    dims = list(weight.dims)
    if node.op_type == "Conv":
        return int(np.prod(dims[1:]))
    trans_b = any(a.name == "transB" and a.i for a in node.attribute)
    return int(dims[-1] if trans_b else dims[0])


def node_costs(
    pre: Path, qdq: Path, nodes: Sequence[str], feeds: Sequence[Feeds], threads: int, work_dir: Path
) -> dict[str, NodeCost]:
    """Each node's local INT8 error and its MACs (module docstring)."""
    import onnx

    float_graph = onnx.load(str(pre), load_external_data=False).graph
    initializers = {t.name: t for t in float_graph.initializer}
    fan_in = {n.name: _fan_in(n, initializers) for n in float_graph.node if n.name in set(nodes)}
    model, pairs = _local_error_model(pre, qdq, nodes)
    path = work_dir / "local_errors.onnx"
    onnx.save(model, str(path), save_as_external_data=model.ByteSize() > 1_900_000_000)
    # Basic optimisation only: the extended level would fuse the copies' Q/DQ into integer kernels and the
    # references into neighbours (their outputs are graph outputs, but the fused copies would still change).
    session = ort_session(path, threads=threads, optimization="basic")
    names = [o.name for o in session.get_outputs()]
    index = {n: i for i, n in enumerate(names)}
    channel_axis = {n.name: 1 if n.op_type == "Conv" else -1 for n in float_graph.node if n.name in set(nodes)}
    macs: dict[str, int] = {}
    signal: dict[str, np.ndarray] = {}
    noise: dict[str, np.ndarray] = {}
    for feed in feeds:
        outputs = session.run(None, feed)
        for node, (reference, quantised) in pairs.items():
            y = np.moveaxis(outputs[index[reference]].astype(np.float64), channel_axis[node], 0)
            e = np.moveaxis(outputs[index[quantised]], channel_axis[node], 0) - y
            macs.setdefault(node, int(y.size) * fan_in[node])
            per_channel = y.reshape(len(y), -1)
            signal[node] = signal.get(node, 0.0) + np.sum(per_channel**2, axis=1)
            noise[node] = noise.get(node, 0.0) + np.sum(e.reshape(len(e), -1) ** 2, axis=1)
    del session
    path.unlink()
    return {node: NodeCost(_channel_error(signal.get(node), noise.get(node)), macs.get(node, 0)) for node in pairs}


def _channel_error(signal: np.ndarray | None, noise: np.ndarray | None) -> float:
    """RMS over output channels of each channel's relative error: a channel the next layer reads is as important
    as a louder one it ignores (an outlier channel must not hide the others' loss)."""
    if signal is None or noise is None:
        return 0.0
    live = signal > 0
    return float(np.sqrt(np.mean(noise[live] / signal[live]))) if live.any() else 0.0
