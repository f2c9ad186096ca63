"""One case per process: a model's graphs in one runtime (PyTorch FP32 or an ONNX Runtime file), so each case's
threads are pinned and its peak RSS is its own. `python -m benchmarks.latency.worker JOB OUT` (run by
`run_worker`).

A job times, at each image size: the denoiser at the batches it asks for (2: a classifier-free guidance pair;
1: one pass, with the guidance scale as an input of a few-step student), and for a model that owns them the text
encoder (at those batches) and the VAE decode (batch 1). Feeds come from the model's `Geometry`; ONNX Runtime
sessions from `ort_session`; times from `measure` (warm-up, then median / p90 / mean of the repeats).
"""

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def feeds(geometry: Any, graph: str, size: int, batch: int, guidance_scale: float, rng: Any) -> dict[str, Any]:
    """Random inputs of `graph` for `size`² images at `batch` (the VAE decodes one image)."""
    import numpy as np

    if graph == "text_encoder":
        ids = rng.integers(0, geometry.vocab_size, (batch, geometry.text_max_length), dtype=np.int64)
        return {geometry.inputs(graph)[0]: ids}
    if graph == "vae_decoder":
        return {geometry.inputs(graph)[0]: rng.standard_normal(geometry.latent_shape(size, size), dtype=np.float32)}
    return geometry.denoiser_feeds(
        rng.standard_normal(geometry.latent_shape(size, size, batch), dtype=np.float32),
        np.full((batch,), 500.0, np.float32),
        rng.standard_normal((batch, geometry.text_max_length, geometry.cross_attention_dim), dtype=np.float32),
        rng.random((batch, geometry.control_channels, size, size), dtype=np.float32),
        1.0,
        guidance_scale,
    )


def time_graphs(call: Any, job: dict[str, Any]) -> dict[str, Any]:
    """`call(graph, feeds)` runs one graph once; time every graph the job asks for."""
    import numpy as np

    from refine_control.runtime.geometry import Geometry
    from refine_control.runtime.timing import measure

    geometry, rng = Geometry.from_facts(job["geometry"]), np.random.default_rng(0)
    guidance, sizes = job["guidance_scale"], job["sizes"]

    def timed(graph: str, size: int, batch: int) -> dict[str, Any]:
        inputs = feeds(geometry, graph, size, batch, guidance, rng)
        return asdict(measure(lambda: call(graph, inputs), warmup=job["warmup"], repeats=job["repeats"]))

    out: dict[str, Any] = {}
    if job["denoiser_batches"]:
        out["denoiser"] = {str(s): {str(b): timed("denoiser", s, b) for b in job["denoiser_batches"]} for s in sizes}
    if job["text_batches"]:
        out["text_encoder"] = {str(b): timed("text_encoder", sizes[0], b) for b in job["text_batches"]}
        out["vae_decode"] = {str(s): timed("vae_decoder", s, 1) for s in sizes}
    return out


def pytorch_case(job: dict[str, Any]) -> dict[str, Any]:
    import torch

    from .cases import ModelSpec, build, teacher_pipeline

    torch.set_num_threads(job["threads"])
    spec = ModelSpec(**job["spec"])
    teacher = None  # a run loads its own pipeline; a preset takes only configs and components from the teacher's
    if spec.kind != "run":
        owned = "meta" if spec.kind == "preset" else "cpu"
        teacher = teacher_pipeline(spec.source, denoiser_device=owned, components_device=owned)
    student = build(spec, teacher, job["resolution"])
    modules = {graph: student.graph_module(graph) for graph in ("denoiser", "text_encoder", "vae_decoder")}
    timed = ["denoiser", *(["text_encoder", "vae_decoder"] if job["text_batches"] else [])]
    if any(p.is_meta for graph in timed for p in modules[graph].parameters()):
        raise RuntimeError(f"{spec.name}: a timed module has no weights (built on the meta device)")

    def call(graph: str, inputs: dict[str, Any]) -> Any:
        return modules[graph](*(torch.from_numpy(v) for v in inputs.values()))

    with torch.inference_mode():
        return time_graphs(call, job)


def ort_case(job: dict[str, Any]) -> dict[str, Any]:
    from refine_control.runtime.session import ort_session

    sessions = {graph: ort_session(path, threads=job["threads"]) for graph, path in job["files"].items()}
    return time_graphs(lambda graph, inputs: sessions[graph].run(None, inputs), job)


def worker_main(job_path: str, out_path: str) -> int:
    """Run one job and write its timings and peak RSS."""
    from .machine import gemm_peaks, peak_rss_mb

    job = json.loads(Path(job_path).read_text())
    if job["runtime"] == "peaks":
        result = gemm_peaks(job["threads"], job["gemm_size"], job["repeats"])
    else:
        result = pytorch_case(job) if job["runtime"] == "pytorch" else ort_case(job)
    result["peak_rss_mb"] = peak_rss_mb()
    Path(out_path).write_text(json.dumps(result))
    return 0


def run_worker(job: dict[str, Any], tmp: Path, timeout: float) -> dict[str, Any]:
    """Run one job in a fresh process (pinned threads, offline); a failure is returned as {"error": ...}."""
    name = "-".join(str(x) for x in (job.get("spec", {}).get("name"), job["runtime"]) if x).replace("/", "_")
    job_path, out_path = tmp / f"{name}.job.json", tmp / f"{name}.out.json"
    job_path.write_text(json.dumps(job))
    threads = str(job["threads"])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
        **{"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads},
        **{"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
        **{"TRANSFORMERS_VERBOSITY": "error", "DIFFUSERS_VERBOSITY": "error"},
    }
    command = [sys.executable, "-m", "benchmarks.latency.worker", str(job_path), str(out_path)]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"worker timed out after {timeout:.0f} s"}
    if done.returncode != 0 or not out_path.is_file():
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()] or [f"exit {done.returncode}"]
        return {"error": f"worker failed: {lines[-1][:300]}"}
    return json.loads(out_path.read_text())


if __name__ == "__main__":
    sys.exit(worker_main(*sys.argv[1:3]))
