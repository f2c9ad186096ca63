"""The machine: CPU facts, its measured dense-kernel peaks, and a process's peak memory."""

import os
import platform
import resource
from pathlib import Path
from typing import Any

from refine_control.runtime.timing import measure

INSTRUCTION_SETS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8")


def machine_info(threads: int) -> dict[str, Any]:
    """`refine_control.results.machine_info` plus what reading a timing needs: instruction sets, versions, OpenMP."""
    import onnxruntime
    import torch

    from refine_control.results import machine_info as basic

    flags: set[str] = set()
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []:
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    return {
        **basic(threads),
        "instruction_sets": [f for f in INSTRUCTION_SETS if f in flags],
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "library default"),
        "platform": platform.platform(),
    }


def peak_rss_mb() -> float:
    """This process's peak RSS: VmHWM (psutil has no peak on Linux; ru_maxrss would include the parent's peak,
    kept across fork + exec)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _single_op(op: str, inputs: list[tuple[str, int]], output: int, n: int, threads: int) -> Any:
    """An ORT session of one n×n `op` node."""
    from onnx import helper

    from refine_control.runtime.session import ort_session

    graph = helper.make_graph(
        [helper.make_node(op, [name for name, _ in inputs], ["Y"])],
        op,
        [helper.make_tensor_value_info(name, dtype, [n, n]) for name, dtype in inputs],
        [helper.make_tensor_value_info("Y", output, [n, n])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return ort_session(model.SerializeToString(), threads=threads)


def gemm_peaks(threads: int, n: int = 2048, repeats: int = 10) -> dict[str, Any]:
    """Measured dense-kernel peak. FP32: the best of a torch matmul (MKL), an ORT MatMul (MLAS) and a torch 3×3
    convolution (oneDNN); INT8: ORT MatMulInteger (u8 × s8, what QDQ graphs run on)."""
    import numpy as np
    import torch
    from onnx import TensorProto

    torch.set_num_threads(threads)
    flops = 2 * n**3

    def rate(fn: Any, work: float = flops) -> float:
        return work / measure(fn, warmup=3, repeats=repeats).median_s / 1e9

    a, b = torch.randn(n, n), torch.randn(n, n)
    mm = _single_op("MatMul", [("A", TensorProto.FLOAT), ("B", TensorProto.FLOAT)], TensorProto.FLOAT, n, threads)
    fp32 = {
        "torch_matmul": rate(lambda: a @ b),
        "ort_matmul": rate(lambda: mm.run(None, {"A": a.numpy(), "B": b.numpy()})),
    }
    channels, side = max(8, n // 4), 32
    conv, x = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False), torch.randn(1, channels, side, side)
    with torch.inference_mode():
        fp32["torch_conv3x3"] = rate(lambda: conv(x), 2 * channels * channels * 9 * side * side)
    int8 = _single_op(
        "MatMulInteger", [("A", TensorProto.UINT8), ("B", TensorProto.INT8)], TensorProto.INT32, n, threads
    )
    rng = np.random.default_rng(0)
    feeds = {"A": rng.integers(0, 255, (n, n), dtype=np.uint8), "B": rng.integers(-127, 127, (n, n), dtype=np.int8)}
    return {
        "fp32_gflops": max(fp32.values()),
        "fp32_by_kernel": fp32,
        "int8_gops": rate(lambda: int8.run(None, feeds)),
        "n": n,
    }
