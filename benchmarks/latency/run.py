"""`run_benchmark(cfg)`: count, export and time every model × runtime; returns the JSON-ready report."""

import os
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .cases import ModelSpec, build, count, model_specs, sampling_of, teacher_pipeline
from .config import TEACHER, BenchConfig
from .export import export_model
from .report import derive
from .stats import load_check, noise_floor
from .worker import CaseWorker, run_worker

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


def floor_case(jobs: list[tuple[str, str, dict[str, Any]]]) -> int | None:
    """Which case is timed twice for the A-vs-A noise floor: the last model's first timed case with a denoiser (the
    students come last, and a fast model's timings are the noisiest in relative terms), else the last timed case."""
    timed = [i for i, (_, _, job) in enumerate(jobs) if "skipped" not in job]
    with_denoiser = [i for i in timed if jobs[i][2]["denoiser_batches"]]
    if not timed:
        return None
    if with_denoiser:
        last_model = jobs[with_denoiser[-1]][0]
        return next(i for i in with_denoiser if jobs[i][0] == last_model)
    return timed[-1]


def time_cases(cases: list[tuple[str, dict[str, Any]]], cfg: BenchConfig, tmp: Path, bar: Any) -> list[dict[str, Any]]:
    """Time every case (name, job) in its own process. Interleaved (the default): start them all, then
    `cfg.repeats` rounds, each one run of every measurement of every case in turn (round-robin); sequential:
    one case after another, all its repeats at once (less memory: one model loaded at a time)."""
    workers = []
    if cfg.schedule == "sequential":
        results = []
        for name, job in cases:
            bar.set_postfix_str(name)
            worker = CaseWorker(name, job, tmp, cfg.worker_timeout)
            if worker.start():
                for _ in range(cfg.repeats):
                    worker.round()
            results.append(worker.finish())
            bar.update()
        return results
    for name, job in cases:
        bar.set_postfix_str(f"{name}: start")
        worker = CaseWorker(name, job, tmp, cfg.worker_timeout)
        worker.start()  # built and warm before the next one starts, so loading never overlaps a timing
        workers.append(worker)
    for r in range(cfg.repeats):
        bar.set_postfix_str(f"round {r + 1}/{cfg.repeats}")
        for worker in workers:
            worker.round()
    results = []
    for worker in workers:
        results.append(worker.finish())
        bar.update()
    return results


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
    # The load at the start, before this run's own work: the cores may be shared with other jobs.
    load, warning = load_check(os.cpu_count())
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    machine = machine_info(cfg.threads)
    machine |= {"load_average_1min": None if load is None else round(load, 2), "load_warning": warning}
    report: dict[str, Any] = {
        "benchmark": "refine-control latency",
        "config": {**asdict(cfg), "sizes": list(sizes)},
        "machine": machine,
        "counter": COUNTER,
        "models": {},
        "cases": [],
    }
    total = 1 + len(specs) * (1 + len(cfg.runtimes)) + 1
    bar = tqdm(total=total, desc="latency", unit="case", disable=not progress)
    with tempfile.TemporaryDirectory(prefix="refine-bench-", dir=cfg.workdir) as tmp_dir:
        tmp = Path(tmp_dir)
        bar.set_postfix_str("matmul peaks")
        peaks_job = {"runtime": "peaks", "threads": cfg.threads, "gemm_size": cfg.gemm_size, "repeats": cfg.repeats}
        report["peaks"] = run_worker(peaks_job, tmp, cfg.worker_timeout)
        if "error" in report["peaks"]:
            raise RefineError(f"the matmul peak could not be measured: {report['peaks']['error']}")
        bar.update()
        jobs = []
        for spec in specs:
            bar.set_postfix_str(f"{spec.name}: count" + (" + export" if ort else ""))
            info = report["models"][spec.name] = measure_model(spec, teacher, cfg, sizes, tmp)
            bar.update()
            jobs += [(spec.name, runtime, _job(spec, runtime, info, cfg, sizes)) for runtime in cfg.runtimes]
        copy = floor_case(jobs)
        timed = [i for i, (_, _, job) in enumerate(jobs) if "skipped" not in job]
        cases = [(f"{jobs[i][0]} {jobs[i][1]}", jobs[i][2]) for i in timed]
        if copy is not None:  # the A-vs-A copy runs last in each round, as far from its original as can be
            cases.append((f"{jobs[copy][0]} {jobs[copy][1]} (A-A copy)", jobs[copy][2]))
        bar.update(len(jobs) - len(timed))
        results = dict(
            zip([*timed, *([-1] if copy is not None else [])], time_cases(cases, cfg, tmp, bar), strict=True)
        )
        for i, (model, runtime, job) in enumerate(jobs):
            report["cases"].append({"model": model, "runtime": runtime, **(job if "skipped" in job else results[i])})
        bar.close()
    report["machine"]["load_average_1min_end"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    report["noise_floor"] = None
    if copy is not None and "error" not in results[copy] and "error" not in results[-1]:
        model, runtime, _ = jobs[copy]
        report["noise_floor"] = noise_floor(results[copy], results[-1], model, runtime)
    return derive(report)
