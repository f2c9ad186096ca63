"""Bounded load test of `refine-serve` on this machine: N concurrent clients, a fixed number of requests.

    python benchmarks/load.py --model MODEL_DIR [--clients 8] [--requests 64] [--json FILE]
    python benchmarks/load.py --url http://127.0.0.1:8000 --pid PID ...   # a server that is already running

With `--model` it starts `refine-serve MODEL` on a free loopback port, runs the load, stops the server (SIGTERM)
and reports its exit code. It only ever talks to loopback addresses (anything else is refused), sends a fixed
number of requests, and stops by itself after `--max-seconds` whatever happens.

Reported: latency p50/p99 of successful generations, throughput (images/s), rejections (503 + Retry-After, the
designed answer to overload), errors (anything else, including timeouts and resets), `/healthz` latency p99
during the load, and the server's idle and peak RSS sampled every 100 ms.
"""

import argparse
import asyncio
import base64
import io
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import psutil
from PIL import Image


def loopback_only(url: str) -> str:
    host = urlsplit(url).hostname or ""
    try:
        ok = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        ok = False
    if not ok:
        raise SystemExit(f"error: load.py only targets loopback addresses, got {host!r}")
    return url.rstrip("/")


def control_png(size: int = 64) -> str:
    image = np.zeros((size, size, 3), np.uint8)
    image[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 255
    image[size // 3 : 2 * size // 3, size // 3 : 2 * size // 3] = 0
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 4) if values else None


class RssSampler:
    """Samples a process's RSS every `interval` seconds in the event loop."""

    def __init__(self, pid: int | None, interval: float = 0.1) -> None:
        self.process = psutil.Process(pid) if pid else None
        self.interval = interval
        self.samples: list[int] = []

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set() and self.process is not None:
            try:
                self.samples.append(self.process.memory_info().rss)
            except psutil.Error:
                return
            await asyncio.sleep(self.interval)


async def run_load(args: argparse.Namespace, url: str, pid: int | None) -> dict:
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    payload = {
        "prompt": "a red striped circle",
        "control_image": control_png(),
        "steps": args.steps,
        "seed": 0,
        "guidance_scale": args.guidance_scale,
    }
    if args.width:
        payload["width"] = payload["height"] = args.width
    limits = httpx.Limits(max_connections=args.clients + 2, max_keepalive_connections=args.clients + 2)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=args.timeout, limits=limits) as client:
        # warm-up (not counted): one request, so the first measured one is not a cold start
        await client.post("/v1/generate", json=payload)
        sampler = RssSampler(pid)
        idle_rss = sampler.process.memory_info().rss if sampler.process else None
        stop = asyncio.Event()
        sampling = asyncio.create_task(sampler.run(stop))
        results: list[tuple[int | str, float, str | None]] = []
        health: list[float] = []
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(args.requests):
            queue.put_nowait(i)

        async def worker() -> None:
            while True:
                try:
                    queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                start = time.perf_counter()
                try:
                    r = await client.post("/v1/generate", json=payload)
                    status: int | str = r.status_code
                    retry = r.headers.get("retry-after")
                    if r.status_code == 503 and retry is not None and retry.isdigit():
                        await asyncio.sleep(min(float(retry), args.max_retry_wait) * args.retry_fraction)
                except httpx.HTTPError as err:
                    status, retry = type(err).__name__, None
                results.append((status, time.perf_counter() - start, retry))

        async def probe_health() -> None:
            while not stop.is_set():
                start = time.perf_counter()
                try:
                    await client.get("/healthz", timeout=5)
                    health.append(time.perf_counter() - start)
                except httpx.HTTPError:
                    health.append(float("inf"))
                await asyncio.sleep(0.1)

        prober = asyncio.create_task(probe_health())
        wall_start = time.perf_counter()
        try:
            await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(args.clients))), args.max_seconds)
            stopped_early = False
        except asyncio.TimeoutError:  # not the builtin TimeoutError on Python 3.10
            stopped_early = True
        wall = time.perf_counter() - wall_start
        stop.set()
        await asyncio.gather(sampling, prober)

    ok = [t for s, t, _ in results if s == 200]
    rejected = [(t, r) for s, t, r in results if s == 503]
    errors = [s for s, _, _ in results if s not in (200, 503)]
    mib = 1 / (1 << 20)
    return {
        "clients": args.clients,
        "requests": args.requests,
        "completed": len(results),
        "stopped_early": stopped_early,
        "steps": args.steps,
        "size": args.width or "model default",
        "ok": len(ok),
        "rejected_503": len(rejected),
        "rejected_with_retry_after": sum(1 for _, r in rejected if r is not None and r.isdigit()),
        "errors": len(errors),
        "error_kinds": sorted({str(e) for e in errors}),
        "latency_p50_s": percentile(ok, 50),
        "latency_p99_s": percentile(ok, 99),
        "rejection_latency_p99_s": percentile([t for t, _ in rejected], 99),
        "throughput_img_per_s": round(len(ok) / wall, 3) if wall > 0 else None,
        "wall_s": round(wall, 3),
        "healthz_p99_s": percentile(health, 99),
        "server_idle_rss_mib": round(idle_rss * mib, 1) if idle_rss else None,
        "server_peak_rss_mib": round(max(sampler.samples) * mib, 1) if sampler.samples else None,
    }


def start_server(model: Path, port: int, extra: list[str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "refine_control.serve.cli", str(model), "--port", str(port), "--no-access-log"]
    return subprocess.Popen([*command, *extra], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_ready(url: str, proc: subprocess.Popen | None, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"error: the server exited with code {proc.returncode}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit("error: the server did not come up")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--model", type=Path, help="start `refine-serve MODEL` on a free loopback port")
    target.add_argument("--url", help="a running server on a loopback address")
    parser.add_argument("--pid", type=int, help="with --url: the server's pid, for RSS sampling")
    parser.add_argument("--token", default=os.environ.get("REFINE_SERVE_TOKEN"), help="bearer token, if set")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--requests", type=int, default=64, help="requests in total (default 64)")
    parser.add_argument("--steps", type=int, default=4, help="denoising steps per request (default 4)")
    parser.add_argument("--width", type=int, default=None, help="output side (default: the model's)")
    parser.add_argument("--guidance-scale", type=float, default=7.5)
    parser.add_argument("--timeout", type=float, default=180, help="per-request timeout, seconds")
    parser.add_argument("--max-seconds", type=float, default=600, help="hard limit of the whole run, seconds")
    parser.add_argument("--retry-fraction", type=float, default=0.0, help="sleep this × Retry-After after a 503")
    parser.add_argument("--max-retry-wait", type=float, default=5.0)
    parser.add_argument("--queue-size", type=int, default=None, help="with --model: the server's queue size")
    parser.add_argument("--workers", type=int, default=None, help="with --model: the server's workers")
    parser.add_argument("--json", type=Path, help="also write the report here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.clients < 1 or args.requests < 1:
        raise SystemExit("error: --clients and --requests must be ≥ 1")
    proc, exit_code = None, None
    if args.model is not None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        extra = []
        if args.queue_size is not None:
            extra += ["--queue-size", str(args.queue_size)]
        if args.workers is not None:
            extra += ["--workers", str(args.workers)]
        url = f"http://127.0.0.1:{port}"
        proc = start_server(args.model, port, extra)
        pid = proc.pid
    else:
        url, pid = loopback_only(args.url), args.pid
    try:
        wait_ready(url, proc)
        report = asyncio.run(run_load(args, url, pid))
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                exit_code = proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                exit_code = proc.wait()
    if proc is not None:
        report["server_exit_code"] = exit_code
    report["cpu_count"] = os.cpu_count()
    for key, value in report.items():
        print(f"{key:28s} {value}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["errors"] == 0 and not report["stopped_early"] else 1


if __name__ == "__main__":
    sys.exit(main())
