"""One case per process: a model's graphs in one runtime (PyTorch FP32 or an ONNX Runtime file), so each case's
threads are pinned and its peak RSS is its own.

A case's process is long-lived (`python -m benchmarks.latency.worker --serve JOB`, driven by `CaseWorker`): it
builds its graphs and feeds, runs the warm-up, then on each `time` line from the parent runs every measurement once
and answers with the seconds, so the parent can time the cases round-robin (one repeat of every case per round; see
`stats`). Only one case runs at a time; the others wait on their pipe. The matmul peaks run once in a one-shot
process (`run_worker`).

A job times, at each image size: the denoiser at the batches it asks for (2: a classifier-free guidance pair;
1: one pass, with the guidance scale as an input of a few-step student), and for a model that owns them the text
encoder (at those batches) and the VAE decode (batch 1). Feeds come from the model's `Geometry`; ONNX Runtime
sessions from `ort_session`.
"""

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
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


Measurement = tuple[tuple[str, ...], Callable[[], Any]]


def measurements(call: Any, job: dict[str, Any]) -> list[Measurement]:
    """`call(graph, feeds)` runs one graph once; every measurement the job asks for, as (key, run-once) pairs. Keys:
    ("denoiser", size, batch), ("text_encoder", batch), ("vae_decode", size), all strings."""
    import numpy as np

    from refine_control.runtime.geometry import Geometry

    geometry, rng = Geometry.from_facts(job["geometry"]), np.random.default_rng(0)
    guidance, sizes = job["guidance_scale"], job["sizes"]

    def once(graph: str, size: int, batch: int) -> Callable[[], Any]:
        inputs = feeds(geometry, graph, size, batch, guidance, rng)
        return lambda: call(graph, inputs)

    out: list[Measurement] = []
    for s in sizes:
        out += [(("denoiser", str(s), str(b)), once("denoiser", s, b)) for b in job["denoiser_batches"]]
    if job["text_batches"]:
        out += [(("text_encoder", str(b)), once("text_encoder", sizes[0], b)) for b in job["text_batches"]]
        out += [(("vae_decode", str(s)), once("vae_decoder", s, 1)) for s in sizes]
    return out


def pytorch_case(job: dict[str, Any]) -> list[Measurement]:
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
        with torch.inference_mode():
            return modules[graph](*(torch.from_numpy(v) for v in inputs.values()))

    return measurements(call, job)


def ort_case(job: dict[str, Any]) -> list[Measurement]:
    from refine_control.runtime.session import ort_session

    sessions = {graph: ort_session(path, threads=job["threads"]) for graph, path in job["files"].items()}
    return measurements(lambda graph, inputs: sessions[graph].run(None, inputs), job)


def serve_main(job_path: str) -> int:
    """The case's side of the protocol: one JSON line per message on the original stdout (everything else the
    libraries print goes to stderr). `ready` (keys) after the warm-up; per `time` line the seconds of one run of
    every measurement; per `done` line the peak RSS, then exit. A failure answers {"error": ...}."""
    from .machine import peak_rss_mb

    channel = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def send(message: dict[str, Any]) -> None:
        channel.write(json.dumps(message) + "\n")

    try:
        job = json.loads(Path(job_path).read_text())
        timed = pytorch_case(job) if job["runtime"] == "pytorch" else ort_case(job)
        for _, run in timed:
            for _ in range(job["warmup"]):
                run()
        send({"ready": [list(key) for key, _ in timed]})
        for line in sys.stdin:
            if line.strip() == "done":
                break
            seconds, started = [], time.monotonic()  # CLOCK_MONOTONIC: one clock for every process
            for _, run in timed:
                tic = time.perf_counter()
                run()
                seconds.append(time.perf_counter() - tic)
            send({"seconds": seconds, "started": started})
        send({"peak_rss_mb": peak_rss_mb()})
    except Exception as err:  # reported to the parent as the case's error
        send({"error": f"{type(err).__name__}: {err}"[:300]})
        return 1
    return 0


def worker_env(threads: int) -> dict[str, str]:
    """A worker's environment: threads pinned, offline, libraries quiet."""
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
        **{"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)},
        **{"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
        **{"TRANSFORMERS_VERBOSITY": "error", "DIFFUSERS_VERBOSITY": "error"},
    }


class CaseWorker:
    """The parent's side of one case's process: start, `round()` (one run of every measurement), `finish()`.
    Any failure (an error answer, a dead process, no answer within `timeout` s) sets `error` and stops it."""

    def __init__(self, name: str, job: dict[str, Any], tmp: Path, timeout: float) -> None:
        self.name, self.timeout, self.error = name, timeout, None
        self.keys: list[tuple[str, ...]] = []
        self.samples: list[list[float]] = []
        self.starts: list[float] = []
        safe = name.replace("/", "_").replace(" ", "_")
        job_path = tmp / f"{safe}.job.json"
        job_path.write_text(json.dumps(job))
        self.stderr = (tmp / f"{safe}.stderr").open("w+")
        command = [sys.executable, "-m", "benchmarks.latency.worker", "--serve", str(job_path)]
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True, bufsize=1,
            env=worker_env(job["threads"]),
        )  # fmt: skip

    def _answer(self) -> dict[str, Any] | None:
        import select

        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], self.timeout)
        line = self.process.stdout.readline() if ready else ""
        if not ready:
            self._fail(f"worker gave no answer within {self.timeout:.0f} s")
            return None
        message = json.loads(line) if line.strip() else None
        if message is None or "error" in message:
            self._fail(message["error"] if message else None)
            return None
        return message

    def _fail(self, error: str | None) -> None:
        if error is None:
            self.process.wait(timeout=30)
            self.stderr.seek(0)
            lines = [x for x in self.stderr.read().strip().splitlines() if x.strip()]
            error = lines[-1][:300] if lines else f"exit {self.process.returncode}"
        self.error = f"worker failed: {error}"
        self.close()

    def start(self) -> bool:
        """Wait until the case is built and warm; False (with `error`) when it failed."""
        message = self._answer()
        if message is not None:
            self.keys = [tuple(k) for k in message["ready"]]
        return self.error is None

    def _send(self, line: str) -> bool:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(line + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            self._fail(None)
            return False
        return True

    def round(self) -> None:
        """One run of every measurement of the case."""
        if self.error is None and self._send("time") and (message := self._answer()) is not None:
            self.samples.append(message["seconds"])
            self.starts.append(message["started"])

    def finish(self) -> dict[str, Any]:
        """Stop the process; the case's summarised timings, when each round started (monotonic clock) and its peak RSS,
        or {"error": ...}."""
        from .stats import summarise

        if self.error is None and self._send("done") and (message := self._answer()) is not None:
            self.close()
            out: dict[str, Any] = {}
            for i, key in enumerate(self.keys):
                stats = summarise([seconds[i] for seconds in self.samples])
                *path, last = key
                node = out
                for part in path:
                    node = node.setdefault(part, {})
                node[last] = stats
            return {**out, "round_starts_s": self.starts, "peak_rss_mb": message["peak_rss_mb"]}
        return {"error": self.error}

    def close(self) -> None:
        try:
            self.process.wait(timeout=5)  # after `done` it exits by itself
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.stderr.close()


def worker_main(job_path: str, out_path: str) -> int:
    """Run the one-shot peaks job and write its result and peak RSS."""
    from .machine import gemm_peaks, peak_rss_mb

    job = json.loads(Path(job_path).read_text())
    result = gemm_peaks(job["threads"], job["gemm_size"], job["repeats"])
    result["peak_rss_mb"] = peak_rss_mb()
    Path(out_path).write_text(json.dumps(result))
    return 0


def run_worker(job: dict[str, Any], tmp: Path, timeout: float) -> dict[str, Any]:
    """Run the one-shot job in a fresh process (pinned threads, offline); a failure is returned as {"error": ...}."""
    job_path, out_path = tmp / f"{job['runtime']}.job.json", tmp / f"{job['runtime']}.out.json"
    job_path.write_text(json.dumps(job))
    command = [sys.executable, "-m", "benchmarks.latency.worker", str(job_path), str(out_path)]
    try:
        done = subprocess.run(
            command, env=worker_env(job["threads"]), capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": f"worker timed out after {timeout:.0f} s"}
    if done.returncode != 0 or not out_path.is_file():
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()] or [f"exit {done.returncode}"]
        return {"error": f"worker failed: {lines[-1][:300]}"}
    return json.loads(out_path.read_text())


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        sys.exit(serve_main(sys.argv[2]))
    sys.exit(worker_main(*sys.argv[1:3]))
