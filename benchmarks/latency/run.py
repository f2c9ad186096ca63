"""`run_benchmark(cfg)`: count, export and time every model × runtime; returns the JSON-ready report."""

import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .cases import ModelSpec, build, count, model_specs, sampling_of, teacher_pipeline
from .config import TEACHER, BenchConfig
from .export import export_model
from .report import derive
from .worker import run_worker

COUNTER = (
    "torch.utils.flop_counter.FlopCounterMode on the meta device (convolutions, matmuls and attention as bmm; "
    "elementwise ops and norms not counted); MACs = FLOPs / 2"
)


def resolve_sizes(cfg: BenchConfig, geometry: Any) -> tuple[int, ...]:
    from refine_control.errors import ConfigError

    sizes = cfg.sizes or ((256, 512) if cfg.scale == "sd15" else (geometry.resolution,))
    bad = [s for s in sizes if s < geometry.size_multiple or s % geometry.size_multiple]
    if bad:
        raise ConfigError(
            f"--size {bad[0]} does not fit this model: image sizes must be multiples of {geometry.size_multiple}"
        )
    return tuple(sizes)


def _ort_denoiser(cfg: BenchConfig, name: str) -> bool:
    return any(r.startswith("ort") for r in cfg.runtimes) and (cfg.ort_models is None or name in cfg.ort_models)


def _job(spec: ModelSpec, runtime: str, info: dict[str, Any], cfg: BenchConfig, sizes: tuple[int, ...]) -> dict:
    """What one worker times: the denoiser at the model's batches, and its own text encoder + VAE decode (only in
    PyTorch and ORT FP32: `refine-export --int8` ships them in FP32); None when nothing is left to time."""
    batches = [1, 2] if info["sampling"]["batch"] == 2 else [1]
    job = {
        "spec": asdict(spec),
        "runtime": runtime,
        "sizes": list(sizes),
        "resolution": min(sizes),
        "geometry": info["geometry"],
        "guidance_scale": info["sampling"]["guidance_scale"],
        "denoiser_batches": batches,
        "text_batches": batches if spec.components and runtime != "ort-int8" else [],
        **{"threads": cfg.threads, "warmup": cfg.warmup, "repeats": cfg.repeats},
    }
    if runtime == "pytorch":
        return job
    files = info["files"]
    wanted = {"denoiser": "denoiser_int8" if runtime == "ort-int8" else "denoiser"}
    if job["text_batches"]:
        wanted |= {"text_encoder": "text_encoder", "vae_decoder": "vae_decoder"}
    found = {graph: files[key]["path"] for graph, key in wanted.items() if "path" in files.get(key, {})}
    if "denoiser" not in found:
        job["denoiser_batches"] = []
    if job["text_batches"] and not {"text_encoder", "vae_decoder"} <= set(found):
        job["text_batches"] = []
    job["files"] = found
    return job if job["denoiser_batches"] or job["text_batches"] else {"skipped": _why(files, wanted.values())}


def _why(files: dict[str, Any], keys: Any) -> str:
    reasons = [files.get(k, {}).get("skipped") for k in keys]
    return next((r for r in reasons if r), "not in --ort-models")


def measure_model(
    spec: ModelSpec, teacher: Any, cfg: BenchConfig, sizes: tuple[int, ...], tmp: Path
) -> dict[str, Any]:
    """Build, count and export one model (in this process); returns its info for the report."""
    ort = any(r.startswith("ort") for r in cfg.runtimes)
    exported = _ort_denoiser(cfg, spec.name)
    student = build(spec, teacher, min(sizes), device="cpu" if exported else "meta")
    sampling = sampling_of(spec, student.geometry, cfg)
    info = {"kind": spec.kind, "source": spec.source, "preset": spec.preset, "few_step": spec.few_step}
    info |= {
        "sampling": {**asdict(sampling), "guidance": sampling.guidance},
        **count(student, list(sizes)),
        "files": {},
    }
    graphs = (["denoiser"] if exported else []) + (["text_encoder", "vae_decoder"] if ort and spec.components else [])
    if graphs:
        int8 = sampling.batch if exported and "ort-int8" in cfg.runtimes else None
        info["files"] = export_model(student, graphs, int8, tmp / spec.name.replace("/", "_"), cfg)
    return info


def run_benchmark(cfg: BenchConfig, progress: bool = True) -> dict[str, Any]:
    from tqdm import tqdm

    from refine_control.errors import RefineError

    from .machine import machine_info

    specs = model_specs(cfg)
    ort = any(r.startswith("ort") for r in cfg.runtimes)
    # The teacher's denoiser is built with weights only where it is exported here (workers build their own).
    teacher = teacher_pipeline(
        specs[0].source,
        denoiser_device="cpu" if _ort_denoiser(cfg, TEACHER) else "meta",
        components_device="cpu" if ort else "meta",
    )
    sizes = resolve_sizes(cfg, build(specs[0], teacher, None).geometry)
    report: dict[str, Any] = {
        "benchmark": "refine-control latency",
        "config": {**asdict(cfg), "sizes": list(sizes)},
        "machine": machine_info(cfg.threads),
        "counter": COUNTER,
        "models": {},
        "cases": [],
    }
    bar = tqdm(total=1 + len(specs) * (1 + len(cfg.runtimes)), desc="latency", unit="case", disable=not progress)
    with tempfile.TemporaryDirectory(prefix="refine-bench-", dir=cfg.workdir) as tmp_dir:
        tmp = Path(tmp_dir)
        bar.set_postfix_str("matmul peaks")
        peaks_job = {"runtime": "peaks", "threads": cfg.threads, "gemm_size": cfg.gemm_size, "repeats": cfg.repeats}
        report["peaks"] = run_worker(peaks_job, tmp, cfg.worker_timeout)
        if "error" in report["peaks"]:
            raise RefineError(f"the matmul peak could not be measured: {report['peaks']['error']}")
        bar.update()
        for spec in specs:
            bar.set_postfix_str(f"{spec.name}: count" + (" + export" if ort else ""))
            info = report["models"][spec.name] = measure_model(spec, teacher, cfg, sizes, tmp)
            bar.update()
            for runtime in cfg.runtimes:
                bar.set_postfix_str(f"{spec.name}: {runtime}")
                job = _job(spec, runtime, info, cfg, sizes)
                result = job if "skipped" in job else run_worker(job, tmp, cfg.worker_timeout)
                report["cases"].append({"model": spec.name, "runtime": runtime, **result})
                bar.update()
        bar.close()
    return derive(report)
