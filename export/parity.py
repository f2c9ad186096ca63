"""Parity of an exported model dir with the PyTorch student, per graph and end to end.

Per graph: the inputs each graph really received while the exported FP32 pipeline ran on the run's own prompts
and controls are fed to the PyTorch module and to every exported variant; max and mean absolute error.
End to end: the same prompts, controls, seeds and initial noise through diffusers' `StableDiffusionControlNetPipeline`
(the student) and through `OnnxControlNetPipeline` (each precision and format); PSNR / SSIM of each exported image
against PyTorch's, and the edge F1 of every image against its control.

Thresholds (checked; a failure stops the export unless `--allow-degraded`):
- FP32 (ONNX and ORT format): every graph's max abs error ≤ its spec's atol (1e-3), image PSNR ≥ 40 dB.
- INT8 / FP16: mean edge F1 ≥ 95 % of the FP32 pipeline's (edge-map preprocessors only).

INT8 selection (before parity, on the calibration samples, never the parity ones): a candidate INT8 denoiser is
accepted only if its images keep ≥ 95 % of the FP32 pipeline's edge F1 and are ≥ 35 dB PSNR from its images.
"""

import contextlib
import logging
import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch
from tqdm.auto import tqdm

from refine_control.evaluation.metrics import edge_prf, edges, psnr, ssim
from refine_control.export.onnx_export import Student
from refine_control.export.samples import Sample
from refine_control.export.spec import SPECS
from refine_control.models.pipeline_dir import schedule_kwargs
from refine_control.runtime import OnnxControlNetPipeline
from refine_control.runtime.layout import GRAPHS, graph_file
from refine_control.runtime.schedulers import SCHEDULERS
from refine_control.runtime.session import ort_session
from refine_control.runtime.timing import measure

logger = logging.getLogger(__name__)

MIN_PSNR_DB = 40.0
MIN_EDGE_F1_RATIO = 0.95
MIN_INT8_PSNR_DB = 35.0
EDGE_PREPROCESSORS = ("canny", "lineart")
MAX_DENOISER_INPUTS = 16


@dataclass(frozen=True)
class SamplingSettings:
    steps: int
    guidance_scale: float
    controlnet_scale: float = 1.0


@dataclass(frozen=True)
class Variant:
    precision: str
    model_format: str

    @property
    def key(self) -> str:
        return self.precision if self.model_format == "onnx" else f"{self.precision}.{self.model_format}"


class RecordingPipeline(OnnxControlNetPipeline):
    """The runtime pipeline, keeping a copy of every graph input it runs (calibration and parity inputs)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.records: dict[str, list[dict[str, np.ndarray]]] = {g: [] for g in GRAPHS}

    def run_graph(self, graph: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
        self.records[graph].append({k: np.array(v, copy=True) for k, v in feeds.items()})
        return super().run_graph(graph, feeds)


def generate(pipe: OnnxControlNetPipeline, samples: list[Sample], settings: SamplingSettings) -> list[np.ndarray]:
    return [
        pipe(
            s.prompt,
            s.control,
            steps=settings.steps,
            guidance_scale=settings.guidance_scale,
            controlnet_scale=settings.controlnet_scale,
            seed=s.seed,
            width=s.control.shape[1],
            height=s.control.shape[0],
        )
        for s in samples
    ]


@contextlib.contextmanager
def _numpy_noise(scheduler: Any, seed: int, initial_shape: tuple[int, ...]) -> Iterator[None]:
    """Make a stochastic diffusers scheduler draw the runtime's noise: numpy `default_rng(seed)` after the
    initial latents, so both pipelines see the same random numbers."""
    module = sys.modules[type(scheduler).__module__]
    if not hasattr(module, "randn_tensor"):
        yield
        return
    rng = np.random.default_rng(seed)
    rng.standard_normal(initial_shape, dtype=np.float32)

    def draw(shape: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        return torch.from_numpy(rng.standard_normal(tuple(shape), dtype=np.float32))

    with mock.patch.object(module, "randn_tensor", draw):
        yield


def torch_images(
    student: Student, runtime: OnnxControlNetPipeline, samples: list[Sample], settings: SamplingSettings
) -> list[np.ndarray]:
    """The PyTorch student (diffusers pipeline) on the same inputs, scheduler and initial noise as the runtime."""
    import diffusers

    pipe = student.pipeline
    scheduler_cls = getattr(diffusers, SCHEDULERS[runtime.scheduler_name].name)
    pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    lcm = runtime.scheduler_name == "lcm"
    custom = runtime.sampling.timesteps(runtime.scheduler_config, settings.steps) if lcm else None
    images = []
    for s in samples:
        height, width = s.control.shape[:2]
        noise = runtime.initial_noise(s.seed, height, width)
        control = torch.from_numpy(np.ascontiguousarray(s.control.transpose(2, 0, 1)[None]))
        with torch.inference_mode(), _numpy_noise(pipe.scheduler, s.seed, noise.shape):
            out = pipe(
                prompt=s.prompt,
                negative_prompt="",
                image=control,
                height=height,
                width=width,
                **schedule_kwargs(settings.steps, custom),
                guidance_scale=settings.guidance_scale,
                controlnet_conditioning_scale=settings.controlnet_scale,
                latents=torch.from_numpy(noise),
                output_type="np",
            ).images[0]
        images.append((out * 255).round().astype(np.uint8))
    return images


def int8_image_check(
    model_dir: Path,
    manifest: dict[str, Any],
    samples: list[Sample],
    settings: SamplingSettings,
    fp32_images: list[np.ndarray],
    preprocessor: str,
    threads: int,
) -> Callable[[Path], dict[str, Any]]:
    """The INT8 selection's judge: a candidate denoiser file → its images' PSNR and edge F1 against the FP32
    pipeline's `fp32_images` on the same samples, and whether both bars (module docstring) hold."""
    pipe = OnnxControlNetPipeline(model_dir, "fp32", num_threads=threads, manifest=manifest)
    edge_like = preprocessor in EDGE_PREPROCESSORS
    fp32_f1 = _edge_f1(fp32_images, samples) if edge_like else None

    def check(candidate: Path) -> dict[str, Any]:
        pipe.sessions["denoiser"] = ort_session(candidate, threads=threads)
        images = generate(pipe, samples, settings)
        p = psnr(np.stack(images), np.stack(fp32_images))
        psnr_min = float(p.min())
        result: dict[str, Any] = {"psnr_db_min": _finite(psnr_min), "accepted": psnr_min >= MIN_INT8_PSNR_DB}
        if fp32_f1 is not None:
            f1 = _edge_f1(images, samples)
            ratio = f1 / fp32_f1 if fp32_f1 > 0 else 1.0
            result.update(edge_f1=f1, edge_f1_ratio=round(ratio, 4))
            result["accepted"] = result["accepted"] and ratio >= MIN_EDGE_F1_RATIO
        return result

    return check


def _evenly(items: list[Any], limit: int) -> list[Any]:
    if len(items) <= limit:
        return items
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, limit).round()]


def torch_graph_outputs(student: Student, records: dict[str, list[dict[str, np.ndarray]]]) -> dict[str, list[Any]]:
    """PyTorch outputs of each graph on the recorded inputs: graph → [(feeds, output)]."""
    geometry = student.geometry
    out: dict[str, list[Any]] = {}
    for graph in GRAPHS:
        module = student.graph_module(graph)
        feeds_list = _evenly(records[graph], MAX_DENOISER_INPUTS)
        pairs = []
        for feeds in feeds_list:
            args = [torch.from_numpy(feeds[name]) for name in geometry.inputs(graph)]
            with torch.inference_mode():
                pairs.append((feeds, module(*args).numpy()))
        out[graph] = pairs
    return out


def _finite(x: float) -> float | None:
    return None if math.isinf(x) or math.isnan(x) else round(float(x), 4)


@dataclass
class ParityReport:
    settings: dict[str, Any]
    graphs: dict[str, dict[str, Any]] = field(default_factory=dict)
    end_to_end: dict[str, dict[str, Any]] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    checks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c["passed"] for c in self.checks)

    def check(self, name: str, value: float | None, limit: str, passed: bool) -> None:
        self.checks.append({"name": name, "value": value, "limit": limit, "passed": bool(passed)})

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "settings": self.settings,
            "thresholds": {
                "fp32_max_abs_error": {g: s.atol for g, s in SPECS.items()},
                "fp32_min_psnr_db": MIN_PSNR_DB,
                "reduced_precision_min_edge_f1_ratio": MIN_EDGE_F1_RATIO,
            },
            "checks": self.checks,
            "graphs": self.graphs,
            "end_to_end": self.end_to_end,
            "latency_ms_per_denoiser_step": self.latency_ms,
        }

    def failures(self) -> list[str]:
        return [f"{c['name']} = {c['value']} (needs {c['limit']})" for c in self.checks if not c["passed"]]


def _image_metrics(
    images: list[np.ndarray], reference: list[np.ndarray], samples: list[Sample], edge_like: bool
) -> dict[str, Any]:
    p = psnr(np.stack(images), np.stack(reference))
    s = ssim(np.stack(images), np.stack(reference))
    out: dict[str, Any] = {
        "psnr_db_min": _finite(float(p.min())),
        "psnr_db_mean": _finite(float(p.mean())) if np.isfinite(p).all() else None,
        "identical_images": int(np.isinf(p).sum()),
        "ssim_mean": round(float(s.mean()), 5),
        "max_pixel_diff": int(
            max(np.abs(a.astype(int) - b.astype(int)).max() for a, b in zip(images, reference, strict=True))
        ),
    }
    if edge_like:
        out["edge_f1"] = _edge_f1(images, samples)
    return out


def _edge_f1(images: list[np.ndarray], samples: list[Sample]) -> float:
    scores = [edge_prf(edges(img), s.control[..., 0] > 0.5)[2] for img, s in zip(images, samples, strict=True)]
    return round(float(np.mean(scores)), 5)


def check_parity(
    model_dir: Path,
    student: Student,
    samples: list[Sample],
    settings: SamplingSettings,
    variants: list[Variant],
    scheduler: str | None,
    threads: int,
    preprocessor: str,
    manifest: dict[str, Any] | None = None,
) -> ParityReport:
    """Run every check of the module docstring on `model_dir`; never raises for a failed threshold.

    `manifest`: the exporter's provisional manifest (in memory; `manifest.json` is written after parity)."""
    report = ParityReport(
        {
            "samples": len(samples),
            "steps": settings.steps,
            "guidance_scale": settings.guidance_scale,
            "controlnet_scale": settings.controlnet_scale,
            "resolution": list(samples[0].control.shape[:2]),
            "threads": threads,
        }
    )
    edge_like = preprocessor in EDGE_PREPROCESSORS
    bar = tqdm(total=len(variants) + 2, desc="parity", leave=False, disable=None)
    # 1. The exported FP32 pipeline, recording what each graph receives; then PyTorch on the same inputs.
    recorder = RecordingPipeline(model_dir, "fp32", scheduler=scheduler, num_threads=threads, manifest=manifest)
    report.settings["scheduler"] = recorder.scheduler_name
    fp32_images = generate(recorder, samples, settings)
    references = torch_graph_outputs(student, recorder.records)
    bar.update()
    pytorch_images = torch_images(student, recorder, samples, settings)
    if edge_like:
        report.end_to_end["pytorch"] = {"edge_f1": _edge_f1(pytorch_images, samples)}
    bar.update()
    timing_feeds = references["denoiser"][len(references["denoiser"]) // 2][0]
    report.settings["denoiser_batch"] = int(timing_feeds["sample"].shape[0])  # 2 with a guidance pair, else 1
    report.latency_ms["pytorch"] = _torch_step_ms(student, timing_feeds, threads)

    # 2. Every exported variant: per-graph errors, images, latency.
    for variant in variants:
        pipe = (
            recorder
            if variant == Variant("fp32", "onnx")
            else OnnxControlNetPipeline(
                model_dir,
                variant.precision,
                scheduler=scheduler,
                model_format=variant.model_format,
                num_threads=threads,
                manifest=manifest,
            )
        )
        for graph in GRAPHS:
            name = pipe.graph_files[graph]
            if name != graph_file(graph, variant.precision, variant.model_format):
                continue  # this variant runs the FP32 file of this graph, measured already
            errors = _graph_errors(pipe, graph, references[graph])
            report.graphs.setdefault(graph, {})[variant.key] = {"file": name, **errors}
            if variant.precision == "fp32":
                atol = SPECS[graph].atol
                report.check(
                    f"{graph} {variant.key} max abs error", errors["max_abs"], f"<= {atol}", errors["max_abs"] <= atol
                )
        images = fp32_images if pipe is recorder else generate(pipe, samples, settings)
        report.end_to_end[variant.key] = _image_metrics(images, pytorch_images, samples, edge_like)
        report.latency_ms[f"onnxruntime {variant.key}"] = round(
            measure(lambda p=pipe: p.run_graph("denoiser", timing_feeds), warmup=2, budget_s=1.0).median_s * 1000, 3
        )
        bar.update()
    bar.close()
    _threshold_checks(report, variants, edge_like)
    return report


def _graph_errors(pipe: OnnxControlNetPipeline, graph: str, pairs: list[Any]) -> dict[str, Any]:
    diffs = [np.abs(pipe.run_graph(graph, feeds) - ref) for feeds, ref in pairs]
    return {
        "max_abs": float(max(d.max() for d in diffs)),
        "mean_abs": float(np.mean([d.mean() for d in diffs])),
        "inputs": len(pairs),
    }


def _torch_step_ms(student: Student, feeds: dict[str, np.ndarray], threads: int) -> float:
    denoiser = student.denoiser()
    args = [torch.from_numpy(feeds[name]) for name in student.geometry.inputs("denoiser")]
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            return round(measure(lambda: denoiser(*args), warmup=2, budget_s=1.0).median_s * 1000, 3)
    finally:
        torch.set_num_threads(previous)


def _threshold_checks(report: ParityReport, variants: list[Variant], edge_like: bool) -> None:
    e2e = report.end_to_end
    for variant in variants:
        metrics = e2e[variant.key]
        if variant.precision == "fp32":
            value = metrics["psnr_db_min"]
            report.check(
                f"{variant.key} image PSNR vs PyTorch (min over samples)",
                value,
                f">= {MIN_PSNR_DB} dB",
                value is None or value >= MIN_PSNR_DB,
            )
        elif edge_like:
            base = e2e["fp32"]["edge_f1"]
            report.check(
                f"{variant.key} edge F1 / fp32 edge F1",
                round(metrics["edge_f1"] / base, 4) if base > 0 else None,
                f">= {MIN_EDGE_F1_RATIO}",
                metrics["edge_f1"] >= MIN_EDGE_F1_RATIO * base,
            )


def format_summary(report: dict[str, Any]) -> str:
    """A few lines for the terminal: per-graph errors, image agreement, edge F1, latency, verdict."""
    lines = ["parity (exported vs PyTorch student):"]
    for graph, variants in report["graphs"].items():
        for key, e in variants.items():
            lines.append(f"  {graph:<13} {key:<9} max abs {e['max_abs']:.2e}  mean abs {e['mean_abs']:.2e}")
    for key, m in report["end_to_end"].items():
        if key == "pytorch":
            lines.append(f"  images  pytorch   edge F1 {m['edge_f1']:.3f}")
            continue
        psnr_text = "identical" if m["psnr_db_min"] is None else f"PSNR min {m['psnr_db_min']:.1f} dB"
        edge = f"  edge F1 {m['edge_f1']:.3f}" if "edge_f1" in m else ""
        lines.append(f"  images  {key:<9} {psnr_text}  SSIM {m['ssim_mean']:.4f}{edge}")
    latency = ", ".join(f"{k} {v:.2f}" for k, v in report["latency_ms_per_denoiser_step"].items())
    batch = report["settings"].get("denoiser_batch", 2)
    what = "CFG batch 2" if batch == 2 else f"batch {batch}, no guidance pair"
    lines.append(f"  denoiser step ({what}), ms: {latency}")
    failed = [c for c in report["checks"] if not c["passed"]]
    lines.append("  verdict: " + ("PASS" if not failed else "FAIL: " + "; ".join(c["name"] for c in failed)))
    return "\n".join(lines)
