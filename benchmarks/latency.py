#!/usr/bin/env python
"""Latency and cost benchmark: teacher vs student presets × PyTorch FP32 / ONNX Runtime FP32 / ONNX Runtime INT8.

Everything is measured in one run on one machine with the same inputs and pinned threads:
- per denoiser step (UNet + ControlNet), batch 1 without and batch 2 with classifier-free guidance: median and p90
  after warm-up;
- per image = text encoder + `--steps` denoiser steps + VAE decode, composed from the medians of each part measured
  here (the scheduler's arithmetic is not counted); ORT INT8 images use the FP32 text encoder and VAE decoder, as
  `refine-export --int8` ships them;
- parameters, MACs per step (counted with torch.utils.flop_counter.FlopCounterMode on the meta device: matmuls,
  convolutions and attention; elementwise ops and norms are not counted), model file sizes, peak RSS (each model ×
  runtime runs in its own worker process, so its peak is its own);
- the machine's measured dense-kernel peak (FP32: the best of a torch matmul, an ONNX Runtime MatMul and a torch
  3×3 convolution; INT8: ONNX Runtime's MatMulInteger), so each step reads as a fraction of the physical limit.

Scales: `builtin` (the shipped teacher or `--teacher DIR`, every student preset built from it with random weights,
and any `--run NAME=DIR`) and `sd15` (the SD1.5 UNet + ControlNet configs with random weights, and the presets
derived from them, at 256² and 512²). Latency does not depend on weight values. No target is checked here: it
prints figures, and exits 1 only when every case failed to run.

    python benchmarks/latency.py --scale builtin --json bench.json --markdown bench.md
    python benchmarks/latency.py --scale sd15 --size 256 --repeats 3 --json sd15.json --markdown sd15.md
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

RUNTIMES = ("pytorch", "ort-fp32", "ort-int8")
SCALES = ("builtin", "sd15")
COUNTER = (
    "torch.utils.flop_counter.FlopCounterMode on the meta device (convolutions, matmuls and attention as bmm; "
    "elementwise ops and norms not counted); MACs = FLOPs / 2"
)
PROTOBUF_LIMIT = 2 * 1024**3  # the project's INT8 quantiser writes single-file protobufs
# SD1.5 (runwayml/stable-diffusion-v1-5 + lllyasviel ControlNet 1.1) configs; the rest are diffusers' defaults.
SD15_UNET = {"cross_attention_dim": 768, "sample_size": 64}
SD15_CONTROLNET = {"cross_attention_dim": 768}
SD15_VAE = {
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "latent_channels": 4,
    "layers_per_block": 2,
    "sample_size": 512,
}
SD15_TEXT = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
}


@dataclass(frozen=True)
class BenchConfig:
    scale: str = "builtin"
    teacher: str = "builtin"  # builtin scale: the teacher to compare against (a pipeline dir also works)
    runs: tuple[tuple[str, str], ...] = ()  # (name, run dir) of trained students measured too
    presets: tuple[str, ...] | None = None  # None: every registered preset
    runtimes: tuple[str, ...] = RUNTIMES
    sizes: tuple[int, ...] | None = None  # None: the teacher's own (builtin) or 256 and 512 (sd15)
    steps: int = 20
    repeats: int = 10
    warmup: int = 2
    threads: int = 2
    exporter: str = "dynamo"
    int8_ops: tuple[str, ...] | None = None  # None: measured per node type, as `refine-export --int8` does
    ort_models: tuple[str, ...] | None = None  # models whose denoiser runs in ORT (None: all)
    quality: tuple[tuple[str | None, str], ...] = ()  # (model name or None, refine-eval JSON)
    quality_metric: str = "edge_f1"
    json: str | None = None
    markdown: str | None = None
    plot: str | None = None
    workdir: str | None = None  # where ONNX files are written (default: a temp dir, removed at the end)
    worker_timeout: float = 3600.0
    gemm_size: int = 2048


@dataclass(frozen=True)
class ModelSpec:
    """One model to measure; workers rebuild it from this (random weights unless it is a trained teacher/run)."""

    name: str
    kind: str  # "teacher" | "preset" | "run"
    source: str  # teacher pipeline dir, "sd15", or run dir
    preset: str | None = None
    components: bool = False  # its own text encoder + VAE decoder are measured with it (teacher and runs)


# ----------------------------------------------------------------------------- measurement helpers


def timed(fn: Callable[[], object], warmup: int, repeats: int) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - tic)
    samples.sort()
    return {
        "median_s": statistics.median(samples),
        "p90_s": samples[min(len(samples) - 1, round(0.9 * (len(samples) - 1)))],
        "mean_s": statistics.fmean(samples),
        "n": len(samples),
    }


def peak_rss_mb() -> float:
    """This process's peak RSS: VmHWM (ru_maxrss would include the parent's peak, kept across fork + exec)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine_info(threads: int) -> dict[str, Any]:
    cpu, flags = platform.processor() or "unknown", set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name") and cpu in ("unknown", platform.processor()):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    wanted = ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16"]
    import onnxruntime
    import torch

    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "instruction_sets": [f for f in wanted if f in flags],
        "threads": threads,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "load_average_1min_at_start": os.getloadavg()[0],
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "library default"),
    }


def _single_op_session(
    op: str, inputs: list[tuple[str, int, list[int]]], output: tuple[int, list[int]], threads: int
) -> Any:
    from onnx import helper

    graph = helper.make_graph(
        [helper.make_node(op, [name for name, _, _ in inputs], ["Y"])],
        op,
        [helper.make_tensor_value_info(name, dtype, shape) for name, dtype, shape in inputs],
        [helper.make_tensor_value_info("Y", *output)],
    )
    return _ort_session(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString(), threads
    )


def gemm_peaks(threads: int, n: int = 2048, repeats: int = 10) -> dict[str, Any]:
    """Measured dense-kernel peak of this machine. FP32: the best of a torch matmul (MKL), an ORT MatMul (MLAS) and
    a torch 3×3 convolution (oneDNN), each n-sized; INT8: ORT MatMulInteger (u8 × s8, what QDQ graphs run on)."""
    import numpy as np
    import torch
    from onnx import TensorProto

    torch.set_num_threads(threads)
    flops = 2 * n**3
    a, b = torch.randn(n, n), torch.randn(n, n)
    fp32 = {"torch_matmul": flops / timed(lambda: a @ b, 3, repeats)["median_s"] / 1e9}
    square = [n, n]
    mm = _single_op_session(
        "MatMul",
        [("A", TensorProto.FLOAT, square), ("B", TensorProto.FLOAT, square)],
        (TensorProto.FLOAT, square),
        threads,
    )
    feeds = {"A": a.numpy(), "B": b.numpy()}
    fp32["ort_matmul"] = flops / timed(lambda: mm.run(None, feeds), 3, repeats)["median_s"] / 1e9
    channels, side = max(8, n // 4), 32
    conv, x = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False), torch.randn(1, channels, side, side)
    with torch.inference_mode():
        seconds = timed(lambda: conv(x), 3, repeats)["median_s"]
    fp32["torch_conv3x3"] = 2 * channels * channels * 9 * side * side / seconds / 1e9
    int8 = _single_op_session(
        "MatMulInteger",
        [("A", TensorProto.UINT8, square), ("B", TensorProto.INT8, square)],
        (TensorProto.INT32, square),
        threads,
    )
    rng = np.random.default_rng(0)
    feeds = {"A": rng.integers(0, 255, (n, n), dtype=np.uint8), "B": rng.integers(-127, 127, (n, n), dtype=np.int8)}
    int8_gops = flops / timed(lambda: int8.run(None, feeds), 3, repeats)["median_s"] / 1e9
    return {"fp32_gflops": max(fp32.values()), "fp32_by_kernel": fp32, "int8_gops": int8_gops, "n": n}


def _ort_session(model: str | bytes, threads: int) -> Any:
    """An ORT CPU session with pinned threads and full graph optimisation (what the runtime uses)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


# ----------------------------------------------------------------------------- models (torch side)


def _read_config(path: Path) -> dict[str, Any]:
    """A diffusers/transformers config.json without its private keys (they make `from_config` restore defaults)."""
    from refine_control.errors import ConfigError

    try:
        config = json.loads((path / "config.json").read_text("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path} has no config.json") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path / 'config.json'} is not valid JSON ({err})") from err
    return {k: v for k, v in config.items() if not k.startswith("_")}


def _controlnet_class(pipeline_dir: Path) -> type:
    """The ControlNet class named in model_index.json (diffusers' or the project's asymmetric one only)."""
    from diffusers import ControlNetModel

    from refine_control.errors import ConfigError
    from refine_control.models.student import AsymControlNetModel

    try:
        module, name = json.loads((pipeline_dir / "model_index.json").read_text("utf-8")).get("controlnet")
    except (OSError, ValueError, TypeError) as err:
        raise ConfigError(f"{pipeline_dir / 'model_index.json'} names no controlnet ({err})") from err
    known = {"ControlNetModel": ControlNetModel, "AsymControlNetModel": AsymControlNetModel}
    if name not in known or not (module.startswith("diffusers") or module.startswith("refine_control")):
        raise ConfigError(f"{pipeline_dir} uses an unsupported controlnet class {module}.{name}")
    return known[name]


def _pipeline_dir(spec: ModelSpec) -> Path:
    return Path(spec.source) / "student" if spec.kind == "run" else Path(spec.source)


def denoiser_configs(spec: ModelSpec) -> tuple[dict[str, Any], dict[str, Any], type]:
    """(UNet config, ControlNet config, ControlNet class) of the model, without building any weights."""
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    from refine_control.models.presets import STUDENT_PRESETS, build_student

    if spec.source == "sd15":
        unet_cfg, cn_cfg, cn_cls = dict(SD15_UNET), dict(SD15_CONTROLNET), ControlNetModel
    else:
        root = _pipeline_dir(spec)
        unet_cfg, cn_cfg, cn_cls = (
            _read_config(root / "unet"),
            _read_config(root / "controlnet"),
            _controlnet_class(root),
        )
    if spec.kind != "preset":
        return unet_cfg, cn_cfg, cn_cls
    with torch.device("meta"):
        teacher_unet = UNet2DConditionModel.from_config(unet_cfg)
        teacher_cn = cn_cls.from_config(cn_cfg)
        unet, controlnet = build_student(teacher_unet, teacher_cn, STUDENT_PRESETS.get(spec.preset or ""))
    clean = {k: v for k, v in unet.config.items() if not k.startswith("_")}
    return clean, {k: v for k, v in controlnet.config.items() if not k.startswith("_")}, type(controlnet)


def component_configs(spec: ModelSpec) -> tuple[dict[str, Any], dict[str, Any]]:
    """(text encoder config, VAE config) the model's images are made with."""
    if spec.source == "sd15":
        return {**SD15_TEXT, "vocab_size": 49408}, dict(SD15_VAE)
    root = _pipeline_dir(spec)
    return _read_config(root / "text_encoder"), _read_config(root / "vae")


def geometry(spec: ModelSpec) -> dict[str, int]:
    """Input shapes shared by every runtime (torch-free workers build their feeds from this)."""
    unet_cfg, cn_cfg, _ = denoiser_configs(spec)
    text_cfg, vae_cfg = component_configs(spec)
    return {
        "latent_channels": int(unet_cfg.get("in_channels", 4)),
        "vae_factor": 2 ** (len(vae_cfg.get("block_out_channels", (64,))) - 1),
        "downsampling": 2 ** (len(unet_cfg.get("block_out_channels", (320, 640, 1280, 1280))) - 1),
        "text_len": int(text_cfg.get("max_position_embeddings", 77)),
        "cross_dim": int(unet_cfg["cross_attention_dim"]),
        "cond_channels": int(cn_cfg.get("conditioning_channels", 3)),
        "vocab": int(text_cfg.get("vocab_size", 49408)),
        "vae_latent_channels": int(vae_cfg.get("latent_channels", 4)),
    }


def build_denoiser(spec: ModelSpec, device: str = "cpu") -> Any:
    """The fused UNet + ControlNet; trained weights for a teacher dir or a run, seeded random weights otherwise."""
    import torch
    from diffusers import UNet2DConditionModel

    from refine_control.models.denoiser import ControlledDenoiser

    unet_cfg, cn_cfg, cn_cls = denoiser_configs(spec)
    if device != "meta" and spec.source != "sd15" and spec.kind in ("teacher", "run"):
        root = _pipeline_dir(spec)
        unet = UNet2DConditionModel.from_pretrained(root, subfolder="unet", local_files_only=True)
        controlnet = cn_cls.from_pretrained(root, subfolder="controlnet", local_files_only=True)
    else:
        torch.manual_seed(0)
        with torch.device(device):
            unet, controlnet = UNet2DConditionModel.from_config(unet_cfg), cn_cls.from_config(cn_cfg)
    return ControlledDenoiser(unet, controlnet).eval().requires_grad_(False)


def build_components(spec: ModelSpec, device: str = "cpu") -> tuple[Any, Any]:
    """(text encoder, VAE) of the model: loaded from its pipeline dir, or SD1.5-sized with random weights."""
    import torch
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    text_cfg, vae_cfg = component_configs(spec)
    if device != "meta" and spec.source != "sd15":
        root = _pipeline_dir(spec)
        text = CLIPTextModel.from_pretrained(root, subfolder="text_encoder", local_files_only=True)
        vae = AutoencoderKL.from_pretrained(root, subfolder="vae", local_files_only=True)
    else:
        torch.manual_seed(0)
        with torch.device(device):
            text, vae = CLIPTextModel(CLIPTextConfig(**text_cfg)), AutoencoderKL.from_config(vae_cfg)
    return text.eval().requires_grad_(False), vae.eval().requires_grad_(False)


def torch_inputs(geo: dict[str, int], size: int, batch: int, device: str = "cpu") -> tuple[Any, ...]:
    import torch

    latent = size // geo["vae_factor"]
    generator = torch.Generator().manual_seed(0)
    tensors = (
        torch.randn(batch, geo["latent_channels"], latent, latent, generator=generator),
        torch.full((batch,), 500.0),
        torch.randn(batch, geo["text_len"], geo["cross_dim"], generator=generator),
        torch.rand(batch, geo["cond_channels"], size, size, generator=generator),
    )
    return tuple(t.to(device) for t in tensors)


def count_macs(fn: Callable[[], object]) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() // 2


def count_model(spec: ModelSpec, sizes: Sequence[int]) -> dict[str, Any]:
    """Parameters and MACs (batch 1) of the denoiser, text encoder and VAE decoder, on the meta device."""
    import torch

    from refine_control.models.presets import count_params

    geo = geometry(spec)
    denoiser = build_denoiser(spec, "meta")
    text, vae = build_components(spec, "meta")
    macs: dict[str, dict[str, int]] = {}
    ids = torch.zeros(1, geo["text_len"], dtype=torch.int64, device="meta")
    text_macs = count_macs(lambda: text(ids))
    for size in sizes:
        inputs = torch_inputs(geo, size, 1, "meta")
        latent = torch.zeros(1, geo["vae_latent_channels"], *inputs[0].shape[2:], device="meta")
        macs[str(size)] = {
            "step": count_macs(lambda inputs=inputs: denoiser(*inputs)),
            "text_encoder": text_macs,
            "vae_decode": count_macs(lambda latent=latent: vae.decode(latent)),
        }
    return {
        "params": {
            "unet": count_params(denoiser.unet),
            "controlnet": count_params(denoiser.controlnet),
            "denoiser": count_params(denoiser),
            "text_encoder": count_params(text),
            "vae_decoder": count_params(vae.decoder, vae.post_quant_conv),
        },
        "macs": macs,
        "geometry": geo,
    }


def _dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file()) / 1e6


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:300]


def export_model(spec: ModelSpec, cfg: BenchConfig, sizes: Sequence[int], out: Path) -> dict[str, Any]:
    """Write the model's ONNX graphs: FP32 and INT8 denoiser (when in --ort-models), its own text encoder and VAE
    decoder (teacher and runs). A graph that fails is recorded as skipped with the reason."""
    from types import SimpleNamespace

    from refine_control.export.onnx_export import Student, export_denoiser, export_text_encoder, export_vae_decoder

    wants_denoiser = cfg.ort_models is None or spec.name in cfg.ort_models
    denoiser = build_denoiser(spec) if wants_denoiser else build_denoiser(spec, "meta")
    text, vae = build_components(spec) if spec.components else (None, None)
    if vae is None:  # the denoiser's export only reads the VAE's scale factor
        vae = SimpleNamespace(config=SimpleNamespace(**component_configs(spec)[1]))
    geo = geometry(spec)
    pipeline = SimpleNamespace(
        unet=denoiser.unet,
        controlnet=denoiser.controlnet,
        text_encoder=text,
        vae=vae,
        tokenizer=_Tokenizer(geo["text_len"], geo["vocab"]),
    )
    student = Student(out, {"resolved": {"resolution": min(sizes)}}, pipeline)
    graphs = [("text_encoder", export_text_encoder), ("vae_decoder", export_vae_decoder)] if spec.components else []
    if wants_denoiser:
        graphs.insert(0, ("denoiser_fp32", export_denoiser))
    files: dict[str, Any] = {}
    for name, export in graphs:
        path = out / name / f"{name.split('_fp32')[0]}.onnx"
        path.parent.mkdir(parents=True)
        try:
            export(student, path, cfg.exporter, _opset())
        except Exception as err:  # an export failure skips that graph's cases, not the benchmark
            files[name] = {"skipped": f"export failed: {_first_line(err)}"}
            continue
        files[name] = {"path": str(path), "mb": _dir_mb(path.parent)}
    del denoiser, text, student, pipeline
    if not wants_denoiser:
        reason = {"skipped": "not in --ort-models"}
        return {**files, "denoiser_fp32": reason, "denoiser_int8": reason}
    if "ort-int8" in cfg.runtimes:
        files["denoiser_int8"] = quantize_model(files["denoiser_fp32"], geo, cfg, sizes, out / "denoiser_int8")
    return files


def _opset() -> int:
    from refine_control.export.spec import DEFAULT_OPSET

    return DEFAULT_OPSET


def quantize_model(
    fp32: dict[str, Any], geo: dict[str, int], cfg: BenchConfig, sizes: Sequence[int], out: Path
) -> dict[str, Any]:
    """Static QDQ INT8 with the project's quantiser, calibrated on random feeds (ranges do not change latency)."""
    import numpy as np

    from refine_control.export.quantize import quantize_int8

    if "skipped" in fp32:
        return fp32
    if fp32["mb"] * 1e6 >= PROTOBUF_LIMIT:
        return {"skipped": "FP32 graph over 2 GiB: export/quantize.py writes single-file protobufs (no external data)"}
    rng = np.random.default_rng(0)
    feeds = [denoiser_feeds(geo, min(sizes), 1, rng) for _ in range(2)]
    path = out / "denoiser.onnx"
    out.mkdir(parents=True)
    try:
        report = quantize_int8(Path(fp32["path"]), path, feeds, feeds[0], op_types=cfg.int8_ops, threads=cfg.threads)
    except Exception as err:  # an INT8 failure skips that case, not the benchmark
        return {"skipped": f"INT8 quantisation failed: {_first_line(err)}"}
    return {"path": str(path), "mb": _dir_mb(out), "quantization": report}


class _Tokenizer:
    """What the exporters read of a tokenizer: its length (vocabulary) and padded sequence length."""

    def __init__(self, model_max_length: int, vocab: int) -> None:
        self.model_max_length = model_max_length
        self.vocab = vocab

    def __len__(self) -> int:
        return self.vocab


# ----------------------------------------------------------------------------- workers (one process per case)


def denoiser_feeds(geo: dict[str, int], size: int, batch: int, rng: Any) -> dict[str, Any]:
    import numpy as np

    from refine_control.serve.runtime.layout import DENOISER_INPUTS

    latent = size // geo["vae_factor"]
    values = (
        rng.standard_normal((batch, geo["latent_channels"], latent, latent), dtype=np.float32),
        np.full((batch,), 500.0, np.float32),
        rng.standard_normal((batch, geo["text_len"], geo["cross_dim"]), dtype=np.float32),
        rng.random((batch, geo["cond_channels"], size, size), dtype=np.float32),
        np.array(1.0, np.float32),
    )
    return dict(zip(DENOISER_INPUTS, values, strict=True))


Step = Callable[[int, int], Callable[[], object]]  # (size, batch) → one denoiser call


def measure_denoiser(step: Step, job: dict[str, Any]) -> dict[str, Any]:
    """Per size: the step at batch 1 and at batch 2 (classifier-free guidance)."""
    w, n = job["warmup"], job["repeats"]
    return {
        "sizes": {str(s): {"step": timed(step(s, 1), w, n), "step_cfg": timed(step(s, 2), w, n)} for s in job["sizes"]}
    }


def measure_components(
    encode: Callable[[int], Callable[[], object]], decode: Callable[[int], Callable[[], object]], job: dict[str, Any]
) -> dict[str, Any]:
    """The text encoder at batch 1 and 2 (CFG), and the VAE decode (batch 1) per size."""
    w, n = job["warmup"], job["repeats"]
    return {
        "text_encoder": timed(encode(1), w, n),
        "text_encoder_cfg": timed(encode(2), w, n),
        "vae_decode": {str(s): timed(decode(s), w, n) for s in job["sizes"]},
    }


def pytorch_worker(job: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(job["threads"])
    spec, geo = ModelSpec(**job["spec"]), job["geometry"]
    with torch.inference_mode():
        if job["part"] == "denoiser":
            denoiser = build_denoiser(spec)
            return measure_denoiser(lambda size, batch: partial(denoiser, *torch_inputs(geo, size, batch)), job)
        text, vae = build_components(spec)
        generator = torch.Generator().manual_seed(0)

        def encode(batch: int) -> Callable[[], object]:
            return partial(text, torch.randint(0, geo["vocab"], (batch, geo["text_len"]), generator=generator))

        def decode(size: int) -> Callable[[], object]:
            latent = size // geo["vae_factor"]
            return partial(vae.decode, torch.randn(1, geo["vae_latent_channels"], latent, latent, generator=generator))

        return measure_components(encode, decode, job)


def ort_worker(job: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    geo, files, rng = job["geometry"], job["files"], np.random.default_rng(0)
    if job["part"] == "denoiser":
        denoiser = _ort_session(files["denoiser"], job["threads"])
        return measure_denoiser(
            lambda size, batch: partial(denoiser.run, None, denoiser_feeds(geo, size, batch, rng)), job
        )
    text = _ort_session(files["text_encoder"], job["threads"])
    vae = _ort_session(files["vae_decoder"], job["threads"])

    def encode(batch: int) -> Callable[[], object]:
        ids = rng.integers(0, geo["vocab"], (batch, geo["text_len"]), dtype=np.int64)
        return partial(text.run, None, {text.get_inputs()[0].name: ids})

    def decode(size: int) -> Callable[[], object]:
        latent = rng.standard_normal(
            (1, geo["vae_latent_channels"], size // geo["vae_factor"], size // geo["vae_factor"]), np.float32
        )
        return partial(vae.run, None, {vae.get_inputs()[0].name: latent})

    return measure_components(encode, decode, job)


def worker_main(job_path: str, out_path: str) -> int:
    """Entry point of a worker process: run one model × runtime, write its timings and peak RSS."""
    job = json.loads(Path(job_path).read_text())
    if job["runtime"] == "peaks":
        result = gemm_peaks(job["threads"], job["gemm_size"])
    else:
        result = pytorch_worker(job) if job["runtime"] == "pytorch" else ort_worker(job)
    result["peak_rss_mb"] = peak_rss_mb()
    Path(out_path).write_text(json.dumps(result))
    return 0


def run_worker(job: dict[str, Any], tmp: Path, cfg: BenchConfig) -> dict[str, Any]:
    """Run one case in a fresh process (pinned threads); a failure is recorded, not raised."""
    name = "-".join(str(x) for x in (job.get("spec", {}).get("name"), job.get("part"), job["runtime"]) if x)
    job_path, out_path = tmp / f"{name}.job.json", tmp / f"{name}.out.json"
    job_path.write_text(json.dumps(job))
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(job["threads"]),
        "MKL_NUM_THREADS": str(job["threads"]),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "DIFFUSERS_VERBOSITY": "error",
    }
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", str(job_path), str(out_path)]
    try:
        done = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=cfg.worker_timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": f"worker timed out after {cfg.worker_timeout:.0f} s"}
    if done.returncode != 0 or not out_path.is_file():
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()] or [f"exit {done.returncode}"]
        return {"error": f"worker failed: {lines[-1][:300]}"}
    return json.loads(out_path.read_text())


# ----------------------------------------------------------------------------- the run


def model_specs(cfg: BenchConfig) -> list[ModelSpec]:
    """Teacher first, then every preset, then the trained runs."""
    from refine_control.models.presets import STUDENT_PRESETS

    if cfg.scale == "sd15":
        source = "sd15"
    else:
        from refine_control.models.teacher import resolve_teacher_path

        source = str(resolve_teacher_path(cfg.teacher))
    presets = cfg.presets if cfg.presets is not None else tuple(STUDENT_PRESETS.names())
    specs = [ModelSpec("teacher", "teacher", source, components=True)]
    specs += [ModelSpec(STUDENT_PRESETS.get(p).name, "preset", source, p) for p in presets]
    specs += [ModelSpec(name, "run", run, components=True) for name, run in cfg.runs]
    return specs


def resolve_sizes(cfg: BenchConfig, teacher: ModelSpec, geo: dict[str, int]) -> tuple[int, ...]:
    from refine_control.errors import ConfigError

    if cfg.sizes is not None:
        sizes = cfg.sizes
    elif cfg.scale == "sd15":
        sizes = (256, 512)
    else:
        sizes = (int(_read_config(Path(teacher.source) / "unet").get("sample_size") or 64) * geo["vae_factor"],)
    multiple = geo["vae_factor"] * geo["downsampling"]
    bad = [s for s in sizes if s < multiple or s % multiple]
    if bad:
        raise ConfigError(f"--size {bad[0]} does not fit this model: image sizes must be multiples of {multiple}")
    return tuple(sizes)


def run_benchmark(cfg: BenchConfig, progress: bool = True) -> dict[str, Any]:
    """Count, export and time every model × runtime; returns the JSON-ready report."""
    from tqdm import tqdm

    from refine_control.errors import RefineError

    specs = model_specs(cfg)
    geo = geometry(specs[0])
    sizes = resolve_sizes(cfg, specs[0], geo)
    report: dict[str, Any] = {
        "benchmark": "refine-control latency",
        "config": {**asdict(cfg), "sizes": list(sizes)},
        "machine": machine_info(cfg.threads),
        "counter": COUNTER,
        "models": {},
        "cases": [],
        "components": {},
        "notes": [],
    }
    ort = any(r.startswith("ort") for r in cfg.runtimes)
    component_runtimes = [r for r in ("pytorch", "ort-fp32") if r in cfg.runtimes or (r == "ort-fp32" and ort)]
    owners = sum(spec.components for spec in specs)
    total = 1 + len(specs) * (1 + len(cfg.runtimes)) + owners * len(component_runtimes)
    with tempfile.TemporaryDirectory(prefix="refine-bench-", dir=cfg.workdir) as tmp_dir:
        tmp = Path(tmp_dir)
        bar = tqdm(total=total, desc="latency", unit="case", disable=not progress)
        bar.set_postfix_str("matmul peaks")
        report["peaks"] = run_worker(
            {"runtime": "peaks", "threads": cfg.threads, "gemm_size": cfg.gemm_size}, tmp, cfg
        )
        if "error" in report["peaks"]:
            raise RefineError(f"the matmul peak could not be measured: {report['peaks']['error']}")
        bar.update()
        for spec in specs:
            bar.set_postfix_str(f"{spec.name}: count" + (" + export" if ort else ""))
            info = {"kind": spec.kind, "source": spec.source, "preset": spec.preset, **count_model(spec, sizes)}
            info["files"] = export_model(spec, cfg, sizes, tmp / spec.name) if ort else {}
            report["models"][spec.name] = info
            bar.update()
            for runtime in cfg.runtimes:
                bar.set_postfix_str(f"{spec.name}: {runtime}")
                report["cases"].append(
                    {"model": spec.name, "runtime": runtime, **_case(spec, runtime, "denoiser", info, cfg, sizes, tmp)}
                )
                bar.update()
            for runtime in component_runtimes if spec.components else ():
                bar.set_postfix_str(f"{spec.name}: {runtime} text encoder + VAE")
                report["components"].setdefault(spec.name, {})[runtime] = _case(
                    spec, runtime, "components", info, cfg, sizes, tmp
                )
                bar.update()
        bar.close()
    report["per_image"] = per_image(report, cfg.steps)
    report["ratios"] = ratios(report)
    report["headline"] = headline(report)
    report["notes"] += notes(report, cfg)
    return report


def _case(
    spec: ModelSpec,
    runtime: str,
    part: str,
    info: dict[str, Any],
    cfg: BenchConfig,
    sizes: Sequence[int],
    tmp: Path,
) -> dict[str, Any]:
    """One worker: `part` (denoiser, or text encoder + VAE decoder) of one model in one runtime."""
    job = {
        "spec": asdict(spec),
        "runtime": runtime,
        "part": part,
        "sizes": list(sizes),
        "geometry": info["geometry"],
        "threads": cfg.threads,
        "warmup": cfg.warmup,
        "repeats": cfg.repeats,
    }
    if runtime != "pytorch":
        names = {"denoiser": ["denoiser_int8" if runtime == "ort-int8" else "denoiser_fp32"]}
        graphs = {name: info["files"][name] for name in names.get(part, ["text_encoder", "vae_decoder"])}
        skipped = [g["skipped"] for g in graphs.values() if "skipped" in g]
        if skipped:
            return {"skipped": skipped[0]}
        job["files"] = {name.removesuffix("_int8").removesuffix("_fp32"): g["path"] for name, g in graphs.items()}
    return run_worker(job, tmp, cfg)


# ----------------------------------------------------------------------------- derived figures


def _case_of(report: dict[str, Any], model: str, runtime: str) -> dict[str, Any] | None:
    for case in report["cases"]:
        if case["model"] == model and case["runtime"] == runtime and "sizes" in case:
            return case
    return None


def _components_of(report: dict[str, Any], model: str, runtime: str) -> dict[str, Any] | None:
    """The text encoder + VAE timings a model's images use: its own (teacher, runs) or the teacher's (presets)."""
    owner = model if report["models"][model]["kind"] in ("teacher", "run") else "teacher"
    found = report["components"].get(owner, {}).get("ort-fp32" if runtime == "ort-int8" else runtime)
    return found if found and "vae_decode" in found else None


def per_image(report: dict[str, Any], steps: int) -> list[dict[str, Any]]:
    """Per image = text encoder + steps × denoiser step + VAE decode (medians), with and without CFG."""
    rows = []
    for case in report["cases"]:
        parts = _components_of(report, case["model"], case["runtime"]) if "sizes" in case else None
        for size, row in case.get("sizes", {}).items() if parts else ():
            vae = parts["vae_decode"][size]["median_s"]
            rows.append(
                {
                    "model": case["model"],
                    "runtime": case["runtime"],
                    "size": int(size),
                    "steps": steps,
                    "text_encoder_s": parts["text_encoder_cfg"]["median_s"],
                    "vae_decode_s": vae,
                    "image_s": parts["text_encoder"]["median_s"] + steps * row["step"]["median_s"] + vae,
                    "image_cfg_s": parts["text_encoder_cfg"]["median_s"] + steps * row["step_cfg"]["median_s"] + vae,
                }
            )
    return rows


def achieved(report: dict[str, Any], case: dict[str, Any], size: str) -> dict[str, float]:
    """GFLOP/s of a step (batch 1 and CFG batch 2) and its fraction of the measured peak."""
    macs = report["models"][case["model"]]["macs"][size]["step"]
    row = case["sizes"][size]
    peak = report["peaks"]["int8_gops" if case["runtime"] == "ort-int8" else "fp32_gflops"]
    gflops = 2 * macs / row["step"]["median_s"] / 1e9
    gflops_cfg = 2 * 2 * macs / row["step_cfg"]["median_s"] / 1e9
    return {
        "gflops": gflops,
        "gflops_cfg": gflops_cfg,
        "fraction_of_peak": gflops / peak,
        "fraction_of_peak_cfg": gflops_cfg / peak,
    }


def _step(report: dict[str, Any], model: str, runtime: str, size: str, key: str = "step_cfg") -> float | None:
    case = _case_of(report, model, runtime)
    if case is None or size not in case["sizes"]:
        return None
    return case["sizes"][size][key]["median_s"]


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def ratios(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Side by side, per model and size: teacher/student (MACs, latency per runtime), PyTorch/ORT, FP32/INT8."""
    rows = []
    for model, info in report["models"].items():
        for size, macs in info["macs"].items():
            teacher_macs = report["models"]["teacher"]["macs"][size]["step"]
            step = {r: _step(report, model, r, size) for r in RUNTIMES}
            teacher = {r: _step(report, "teacher", r, size) for r in RUNTIMES}
            rows.append(
                {
                    "model": model,
                    "size": int(size),
                    "macs_teacher_over_model": teacher_macs / macs["step"],
                    "params_teacher_over_model": report["models"]["teacher"]["params"]["denoiser"]
                    / info["params"]["denoiser"],
                    "latency_teacher_over_model": {r: _ratio(teacher[r], step[r]) for r in RUNTIMES},
                    "pytorch_over_ort_fp32": _ratio(step["pytorch"], step["ort-fp32"]),
                    "ort_fp32_over_ort_int8": _ratio(step["ort-fp32"], step["ort-int8"]),
                    "pytorch_over_ort_int8": _ratio(step["pytorch"], step["ort-int8"]),
                    "teacher_pytorch_over_model_fastest": _ratio(
                        teacher["pytorch"], min((s for s in step.values() if s), default=None)
                    ),
                }
            )
    return rows


def headline(report: dict[str, Any]) -> dict[str, Any]:
    """The closing figures: best student vs teacher (MACs, latency), ORT INT8 vs PyTorch FP32, best fraction of peak."""
    students = [r for r in report["ratios"] if r["model"] != "teacher"]
    out: dict[str, Any] = {}
    if students:
        best = max(students, key=lambda r: r["macs_teacher_over_model"])
        out["fewest_macs"] = {k: best[k] for k in ("model", "size", "macs_teacher_over_model")}
        fastest = max(students, key=lambda r: r["teacher_pytorch_over_model_fastest"] or 0.0)
        if fastest["teacher_pytorch_over_model_fastest"]:  # None when the teacher ran in no PyTorch case
            out["fastest_vs_teacher_pytorch"] = {
                k: fastest[k] for k in ("model", "size", "teacher_pytorch_over_model_fastest")
            }
    int8 = [r for r in report["ratios"] if r["pytorch_over_ort_int8"]]
    if int8:
        out["ort_int8_over_pytorch_fp32"] = {r["model"] + f"@{r['size']}": r["pytorch_over_ort_int8"] for r in int8}
    fractions = [
        (achieved(report, c, s)["fraction_of_peak_cfg"], c["model"], c["runtime"], s)
        for c in report["cases"]
        if "sizes" in c
        for s in c["sizes"]
        if achieved(report, c, s)["fraction_of_peak_cfg"] is not None
    ]
    if fractions:
        frac, model, runtime, size = max(fractions)
        out["best_fraction_of_peak_cfg"] = {"model": model, "runtime": runtime, "size": int(size), "fraction": frac}
    return out


def notes(report: dict[str, Any], cfg: BenchConfig) -> list[str]:
    out = [
        f"threads pinned to {cfg.threads} (torch.set_num_threads, ORT intra_op_num_threads, inter_op 1); "
        f"warm-up {cfg.warmup}, then median and p90 of {cfg.repeats}",
        "per image = text encoder + steps × step + VAE decode (medians; the scheduler's arithmetic is not counted); "
        "ORT INT8 images use the FP32 text encoder and VAE decoder",
        "fraction of peak: FP32 runtimes against the best measured FP32 kernel (matmul or convolution), ORT INT8 "
        "against the INT8 MatMulInteger peak (its graphs still run attention and elementwise ops in FP32)",
        "student presets have random weights (latency does not depend on weight values)",
    ]
    if cfg.scale == "sd15":
        out.append(
            "sd15 scale: SD1.5 UNet + ControlNet, CLIP ViT-L/14 text encoder and SD VAE configs, random weights"
        )
    out += [
        f"{c['model']} {c['runtime']} denoiser: {c.get('skipped') or c.get('error')}"
        for c in report["cases"]
        if "sizes" not in c
    ]
    out += [
        f"{model} {runtime} text encoder + VAE: {c.get('skipped') or c.get('error')}"
        for model, by_runtime in report["components"].items()
        for runtime, c in by_runtime.items()
        if "vae_decode" not in c
    ]
    for name, info in report["models"].items():
        q = info["files"].get("denoiser_int8", {}).get("quantization")
        if q:
            out.append(
                f"{name} INT8: {q['format']} {', '.join(q['op_types'])} ({q['quantized_nodes']} nodes, "
                f"selection {q['selection']}; faster than FP32 in the quantiser's own check: {q['faster_than_fp32']})"
            )
    return out


# ----------------------------------------------------------------------------- outputs


def _ms(timing: dict[str, float] | None) -> str:
    return "-" if timing is None else f"{timing['median_s'] * 1e3:.1f} / {timing['p90_s'] * 1e3:.1f}"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}×"


def markdown(report: dict[str, Any]) -> str:
    m, peaks, cfg = report["machine"], report["peaks"], report["config"]
    lines = [
        f"# Latency: {cfg['scale']} scale",
        "",
        f"- CPU: {m['cpu']} ({m['logical_cpus']} logical CPUs; {', '.join(m['instruction_sets']) or 'no AVX'}; "
        f"torch capability {m['torch_cpu_capability']}); **{m['threads']} threads**",
        f"- torch {m['torch']}, onnxruntime {m['onnxruntime']}, Python {m['python']}; OMP_WAIT_POLICY "
        f"{m['omp_wait_policy']}; load average at start {m['load_average_1min_at_start']:.1f}",
        f"- measured peak (n = {peaks['n']}): FP32 {peaks['fp32_gflops']:.0f} GFLOP/s (best of "
        + ", ".join(f"{k} {v:.0f}" for k, v in peaks["fp32_by_kernel"].items())
        + f"), INT8 {peaks['int8_gops']:.0f} GOP/s (ORT MatMulInteger)",
        f"- MACs: {report['counter']}",
        f"- per image: {cfg['steps']} steps; batch 1, CFG = batch 2",
        "",
        "| model | size | runtime | params (M) | GMAC/step | file (MB) | step ms (med / p90) | CFG step ms "
        "(med / p90) | image s | image s (CFG) | GFLOP/s (CFG) | % of peak | peak RSS (MB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    images = {(r["model"], r["runtime"], r["size"]): r for r in report["per_image"]}
    for case in report["cases"]:
        info = report["models"][case["model"]]
        if "sizes" not in case:
            continue
        key = {"pytorch": None, "ort-fp32": "denoiser_fp32", "ort-int8": "denoiser_int8"}[case["runtime"]]
        mb = info.get("files", {}).get(key, {}).get("mb") if key else info["params"]["denoiser"] * 4 / 1e6
        for size, row in case["sizes"].items():
            rate = achieved(report, case, size)
            image = images.get((case["model"], case["runtime"], int(size)), {})
            lines.append(
                f"| {case['model']} | {size} | {case['runtime']} | {info['params']['denoiser'] / 1e6:.1f} "
                f"| {info['macs'][size]['step'] / 1e9:.2f} | {'-' if mb is None else f'{mb:.1f}'} "
                f"| {_ms(row['step'])} | {_ms(row['step_cfg'])} "
                f"| {image.get('image_s', float('nan')):.3g} | {image.get('image_cfg_s', float('nan')):.3g} "
                f"| {rate['gflops_cfg']:.1f} | {100 * rate['fraction_of_peak_cfg']:.1f}% "
                f"| {case['peak_rss_mb']:.0f} |"
            )
    lines += ["", "Text encoder and VAE decoder (shared by the presets; ORT INT8 images use the ORT FP32 ones):", ""]
    lines += ["| owner | runtime | text encoder ms (b1 / CFG b2) | VAE decode ms per size | peak RSS (MB) |"]
    lines += ["|---|---|---|---|---|"]
    for owner, by_runtime in report["components"].items():
        for runtime, c in by_runtime.items():
            if "vae_decode" not in c:
                continue
            vae = ", ".join(f"{s}²: {t['median_s'] * 1e3:.1f}" for s, t in c["vae_decode"].items())
            te = f"{c['text_encoder']['median_s'] * 1e3:.1f} / {c['text_encoder_cfg']['median_s'] * 1e3:.1f}"
            lines.append(f"| {owner} | {runtime} | {te} | {vae} | {c['peak_rss_mb']:.0f} |")
    lines += [
        "",
        "Ratios (CFG step medians; > 1 means the second is faster / smaller):",
        "",
        "| model | size | MACs teacher/model | latency teacher/model (PyTorch, ORT FP32, ORT INT8) "
        "| PyTorch/ORT FP32 | ORT FP32/INT8 | PyTorch FP32/ORT INT8 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["ratios"]:
        lat = ", ".join(_x(r["latency_teacher_over_model"][k]) for k in RUNTIMES)
        lines.append(
            f"| {r['model']} | {r['size']} | {r['macs_teacher_over_model']:.2f}× | {lat} "
            f"| {_x(r['pytorch_over_ort_fp32'])} | {_x(r['ort_fp32_over_ort_int8'])} | {_x(r['pytorch_over_ort_int8'])} |"
        )
    lines += ["", *(f"- {n}" for n in report["notes"])]
    return "\n".join(lines) + "\n"


def summary(report: dict[str, Any]) -> str:
    """The headline in a few plain lines (printed at the end of a run)."""
    h, lines = report["headline"], []
    if "fewest_macs" in h:
        f = h["fewest_macs"]
        lines.append(
            f"fewest MACs: {f['model']} at {f['size']}², {f['macs_teacher_over_model']:.2f}× fewer than the teacher"
        )
    if "fastest_vs_teacher_pytorch" in h:
        f = h["fastest_vs_teacher_pytorch"]
        lines.append(
            f"fastest student: {f['model']} at {f['size']}², {f['teacher_pytorch_over_model_fastest']:.2f}× faster "
            "than the teacher in PyTorch FP32 (CFG step, its fastest runtime)"
        )
    for key, value in h.get("ort_int8_over_pytorch_fp32", {}).items():
        lines.append(f"ORT INT8 vs PyTorch FP32, {key}: {value:.2f}×")
    if "best_fraction_of_peak_cfg" in h:
        f = h["best_fraction_of_peak_cfg"]
        lines.append(
            f"best fraction of the measured peak: {100 * f['fraction']:.1f}% ({f['model']}, {f['runtime']}, {f['size']}²)"
            + (
                " - above 100%: other load disturbed the peak probe, so read no fraction of this run"
                if f["fraction"] > 1
                else ""
            )
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- quality plot (PIL, no matplotlib)


def read_quality(cfg: BenchConfig, models: Sequence[str]) -> dict[str, float]:
    """Quality per model from refine-eval JSON files: the model's metric and, when present, its teacher's."""
    from refine_control.errors import ConfigError

    runs = {str(Path(d).resolve()): name for name, d in cfg.runs}
    scores: dict[str, float] = {}
    for name, file in cfg.quality:
        try:
            data = json.loads(Path(file).read_text("utf-8"))
            metrics, columns = data["metrics"], data.get("columns", {})
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ConfigError(f"--quality {file}: not a refine-eval JSON report ({err})") from err
        model = name or runs.get(str(Path(str(data.get("target", ""))).resolve()))
        if model not in models:
            raise ConfigError(
                f"--quality {file}: no measured model matches it (target {data.get('target')!r})",
                hint="pass it as NAME=FILE with NAME one of: " + ", ".join(models),
            )
        if cfg.quality_metric not in metrics:
            raise ConfigError(f"--quality {file} has no metric {cfg.quality_metric!r}; it has: {', '.join(metrics)}")
        scores[model] = float(metrics[cfg.quality_metric])
        teacher = columns.get("teacher", {}) if isinstance(columns, dict) else {}
        if model != "teacher" and cfg.quality_metric in teacher:
            scores.setdefault("teacher", float(teacher[cfg.quality_metric]))
    return scores


def quality_points(report: dict[str, Any], scores: dict[str, float]) -> list[dict[str, Any]]:
    """(per-image CFG latency, quality) for every measured model × runtime with a score, at the smallest size."""
    size = min(int(s) for s in report["config"]["sizes"])
    return [
        {"model": r["model"], "runtime": r["runtime"], "image_cfg_s": r["image_cfg_s"], "quality": scores[r["model"]]}
        for r in report["per_image"]
        if r["model"] in scores and r["size"] == size
    ]


def plot_quality(points: list[dict[str, Any]], metric: str, path: Path) -> None:
    """Scatter of per-image latency (CFG, log x) vs quality, one colour per runtime, drawn with PIL."""
    import io
    import math

    from PIL import Image, ImageDraw

    from refine_control.atomic import write_bytes

    width, height, left, right, top, bottom = 760, 480, 70, 30, 30, 60
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    xs = [math.log10(p["image_cfg_s"]) for p in points]
    ys = [p["quality"] for p in points]
    x0, x1 = min(xs) - 0.1, max(xs) + 0.1
    y0, y1 = min(ys) - 0.05 * (max(ys) - min(ys) or 1), max(ys) + 0.05 * (max(ys) - min(ys) or 1)

    def at(x: float, y: float) -> tuple[float, float]:
        return (
            left + (x - x0) / (x1 - x0) * (width - left - right),
            height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom),
        )

    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    for i in range(5):
        x, y = x0 + i * (x1 - x0) / 4, y0 + i * (y1 - y0) / 4
        px, _ = at(x, y0)
        _, py = at(x0, y)
        draw.text((px - 15, height - bottom + 5), f"{10**x:.2g}", fill="black")
        draw.text((5, py - 6), f"{y:.3g}", fill="black")
    draw.text((width // 2 - 120, height - 25), "seconds per image (CFG, log scale)", fill="black")
    draw.text((left, 8), f"{metric} vs latency", fill="black")
    colours = {"pytorch": (200, 40, 40), "ort-fp32": (40, 90, 200), "ort-int8": (30, 150, 60)}
    for p, x, y in zip(points, xs, ys, strict=True):
        px, py = at(x, y)
        colour = colours.get(p["runtime"], (0, 0, 0))
        draw.ellipse([px - 4, py - 4, px + 4, py + 4], fill=colour)
        draw.text((px + 6, py - 6), f"{p['model']} ({p['runtime']})", fill=colour)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    write_bytes(path, buffer.getvalue())


# ----------------------------------------------------------------------------- command line


def _named(text: str) -> tuple[str | None, str]:
    name, sep, value = text.partition("=")
    return (name, value) if sep else (None, text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="benchmarks/latency.py",
        description="Latency and cost of the teacher vs the student presets (and trained runs) in PyTorch FP32, "
        "ONNX Runtime FP32 and ONNX Runtime INT8, against this machine's measured dense-kernel peak.",
    )
    p = parser.add_argument
    p("--scale", choices=SCALES, default="builtin", help="builtin: the shipped teacher; sd15: SD1.5-size, random")
    p("--teacher", default="builtin", help="builtin scale: `builtin` or a pipeline dir. Default: %(default)s")
    p("--run", action="append", default=[], metavar="NAME=DIR", help="a refine-distill run to measure too")
    p("--presets", default=None, help="comma-separated student presets (default: all; `none` for none)")
    p("--runtimes", default=",".join(RUNTIMES), help="comma-separated subset of: " + ", ".join(RUNTIMES))
    p("--size", type=int, action="append", default=None, help="image size (repeatable). Default: the teacher's")
    p("--steps", type=int, default=20, help="denoiser steps per image. Default: %(default)s")
    p("--repeats", type=int, default=10, help="timed repeats per measurement. Default: %(default)s")
    p("--warmup", type=int, default=2, help="untimed runs first. Default: %(default)s")
    p("--threads", type=int, default=2, help="threads for torch and ONNX Runtime. Default: %(default)s")
    p("--exporter", choices=("dynamo", "torchscript"), default="dynamo", help="ONNX exporter. Default: %(default)s")
    p("--int8-ops", default="measured", help="`measured` (as refine-export) or node types, e.g. Conv,MatMul")
    p(
        "--ort-models",
        default=None,
        help="comma-separated models whose denoiser is exported and run in ONNX Runtime (default: all); e.g. at sd15 "
        "scale the compact presets only, since a full-UNet graph takes minutes to export and is over 2 GiB",
    )
    p("--quality", action="append", default=[], metavar="[NAME=]FILE", help="refine-eval JSON for the plot")
    p("--quality-metric", default="edge_f1", help="metric of the quality files to plot. Default: %(default)s")
    p("--json", default=None, help="write the report here (atomic)")
    p("--markdown", default=None, help="write the markdown tables here (atomic)")
    p("--plot", default=None, help="latency vs quality PNG (default with --quality: beside --json)")
    p("--workdir", default=None, help="parent of the temp dir for ONNX files (default: the system temp dir)")
    p(
        "--quick",
        action="store_true",
        help="smoke test: 1 warm-up, 2 repeats, 2 steps, a small matmul, torchscript export, INT8 without selection",
    )
    p("--worker", nargs=2, metavar=("JOB", "OUT"), help=argparse.SUPPRESS)
    return parser


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    from refine_control.errors import ConfigError
    from refine_control.export.onnx_export import read_run_config
    from refine_control.export.quantize import CANDIDATE_OP_TYPES
    from refine_control.models.presets import STUDENT_PRESETS

    runtimes = tuple(r.strip() for r in args.runtimes.split(",") if r.strip())
    unknown = [r for r in runtimes if r not in RUNTIMES]
    if unknown or not runtimes:
        raise ConfigError(f"--runtimes: unknown {unknown or 'empty'}; choose from {', '.join(RUNTIMES)}")
    for name in ("steps", "repeats", "threads"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        raise ConfigError(f"--warmup must be >= 0, got {args.warmup}")
    if args.size is not None and any(s < 8 for s in args.size):
        raise ConfigError(f"--size must be >= 8, got {min(args.size)}")
    runs = []
    for text in args.run:
        name, run = _named(text)
        if not name or not run:
            raise ConfigError(f"--run {text!r}: expected NAME=DIR")
        read_run_config(Path(run))
        runs.append((name, run))
    if args.scale == "sd15" and runs:
        raise ConfigError("--run is for the builtin scale (trained runs have their own teacher's size)")
    presets = None
    if args.presets is not None:
        presets = () if args.presets == "none" else tuple(p.strip() for p in args.presets.split(",") if p.strip())
        for preset in presets:
            STUDENT_PRESETS.get(preset)
    names = ["teacher", *(presets if presets is not None else STUDENT_PRESETS.names()), *(n for n, _ in runs)]
    if len(set(names)) != len(names):
        raise ConfigError(f"model names must be unique, got {names}")
    for _, file in map(_named, args.quality):
        if not Path(file).is_file():
            raise ConfigError(f"--quality {file}: no such file")
    plot = args.plot
    if args.quality and plot is None:
        if args.json is None:
            raise ConfigError("--quality needs --plot PNG (or --json, beside which the plot is written)")
        plot = str(Path(args.json).with_suffix(".png"))
    int8_ops = None if args.int8_ops == "measured" else tuple(o.strip() for o in args.int8_ops.split(","))
    if int8_ops is not None and (not int8_ops or set(int8_ops) - set(CANDIDATE_OP_TYPES)):
        raise ConfigError(f"--int8-ops {args.int8_ops!r}: use `measured` or some of {', '.join(CANDIDATE_OP_TYPES)}")
    ort_models = None if args.ort_models is None else tuple(m.strip() for m in args.ort_models.split(",") if m.strip())
    if ort_models is not None and set(ort_models) - set(names):
        unknown = ", ".join(sorted(set(ort_models) - set(names)))
        raise ConfigError(f"--ort-models: unknown model {unknown}; measured models: {', '.join(names)}")
    cfg = BenchConfig(
        scale=args.scale,
        teacher=args.teacher,
        runs=tuple(runs),
        presets=presets,
        runtimes=runtimes,
        sizes=tuple(args.size) if args.size else None,
        steps=args.steps,
        repeats=args.repeats,
        warmup=args.warmup,
        threads=args.threads,
        exporter=args.exporter,
        int8_ops=int8_ops,
        ort_models=ort_models,
        quality=tuple(_named(q) for q in args.quality),
        quality_metric=args.quality_metric,
        json=args.json,
        markdown=args.markdown,
        plot=plot,
        workdir=args.workdir,
    )
    if args.quick:
        quick = {"warmup": 1, "repeats": 2, "steps": 2, "gemm_size": 256, "exporter": "torchscript"}
        cfg = replace(cfg, **quick, int8_ops=cfg.int8_ops or ("Conv", "MatMul", "Gemm"))
    return cfg


def main(argv: Sequence[str] | None = None) -> int:
    from refine_control.cli_utils import offline_env, run_cli, setup_logging

    args = build_parser().parse_args(argv)
    if args.worker:
        return worker_main(*args.worker)
    setup_logging(-1)
    offline_env()
    # The ONNX exporter logs every op it cannot register (torchvision's) and warns about pytree internals; torch
    # sets its loggers' levels when imported, so this imports it first.
    from refine_control.export.exporter import quiet_exporter_logs

    quiet_exporter_logs()

    def body() -> int:
        from refine_control.atomic import write_json, write_text

        cfg = config_from_args(args)
        scores = read_quality(cfg, [spec.name for spec in model_specs(cfg)]) if cfg.quality else {}
        report = run_benchmark(cfg, progress=sys.stderr.isatty())
        report["command"] = " ".join(["python benchmarks/latency.py", *(argv if argv is not None else sys.argv[1:])])
        report["quality"] = {"metric": cfg.quality_metric, "scores": scores, "points": quality_points(report, scores)}
        table = markdown(report)
        if cfg.json:
            write_json(cfg.json, report)
        if cfg.markdown:
            write_text(cfg.markdown, f"Command: `{report['command']}`\n\n{table}")
        if report["quality"]["points"] and cfg.plot:
            plot_quality(report["quality"]["points"], cfg.quality_metric, Path(cfg.plot))
        print(table)
        print(summary(report))
        failed = [c for c in report["cases"] if "error" in c]
        return 1 if failed and len(failed) == len(report["cases"]) else 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
