"""Bounded load test of `refine-serve` on this machine: N concurrent clients, a fixed number of requests.

    python benchmarks/load.py --model MODEL_DIR [--clients 8] [--requests 64] [--json FILE]
    python benchmarks/load.py --url http://127.0.0.1:8000 --pid PID ...   # a server that is already running
    python benchmarks/load.py --model MODEL_DIR --stalled 200 --clients 1 --requests 4   # slow-client mode

With `--model` it starts `refine-serve MODEL` on a free loopback port, runs the load, stops the server (SIGTERM)
and reports its exit code. It only ever talks to loopback addresses (anything else is refused), sends a fixed
number of requests, and stops by itself after `--max-seconds` whatever happens.

Reported: latency p50/p99 of successful generations, throughput (images/s), rejections (503 + Retry-After, the
designed answer to overload), errors (anything else, including timeouts and resets), `/healthz` latency p99
during the load, and the server's idle and peak RSS sampled every 100 ms.

Slow-client mode (`--stalled N`): before the load starts, N attacker connections are opened and kept open for
the whole run, a third of each kind: `idle` (connect, send nothing), `partial-head` (half a request line, then
silence) and `slow-body` (a complete POST head announcing a large body, then one byte every
`--trickle-interval` seconds). One the server closes is opened again at once, so N stay open throughout, as a
patient attacker would keep them. Reported besides the above: how many were open when the load started and
when it ended, how many the server closed, and the `/healthz` latencies measured while they were open.
"""

import argparse
import asyncio
import base64
import contextlib
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
    """The q-th percentile; an observed value (no interpolation), so a failed probe (inf) reads as inf, not nan."""
    return round(float(np.percentile(values, q, method="higher")), 4) if values else None


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


STALL_KINDS = ("idle", "partial-head", "slow-body")


class Stalled:
    """Keeps `count` slow or idle connections open against `url` (see the module docstring), reopening any the
    server closes."""

    def __init__(self, url: str, count: int, trickle_s: float) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.count, self.trickle_s = count, trickle_s
        self.open = 0
        self.opened = 0
        self.closed_by_server = 0
        self.connect_errors = 0
        self.responses: dict[str, int] = {}
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    async def start(self, timeout: float = 30.0) -> None:
        self._tasks = [asyncio.create_task(self._hold(STALL_KINDS[i % 3])) for i in range(self.count)]
        deadline = time.monotonic() + timeout
        while self.open < self.count and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _hold(self, kind: str) -> None:
        while not self._stop.is_set():
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port)
            except OSError:
                self.connect_errors += 1
                await asyncio.sleep(0.1)
                continue
            self.open += 1
            self.opened += 1
            try:
                await self._stall(kind, reader, writer)
            finally:
                self.open -= 1
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

    async def _stall(self, kind: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host = f"{self.host}:{self.port}".encode()
        if kind == "partial-head":
            writer.write(b"GET /healthz HT")
        elif kind == "slow-body":
            head = b"POST /v1/generate HTTP/1.1\r\nHost: " + host + b"\r\nContent-Type: application/json\r\n"
            writer.write(head + b"Content-Length: 1000000\r\n\r\n{")
        with contextlib.suppress(OSError):
            await writer.drain()
        read = asyncio.create_task(reader.read(4096))
        try:
            while not self._stop.is_set():
                stopping = asyncio.create_task(self._stop.wait())
                done, _ = await asyncio.wait({read, stopping}, timeout=self.trickle_s, return_when="FIRST_COMPLETED")
                stopping.cancel()
                if read in done:  # the server answered or closed: this connection is over
                    data = b"" if read.exception() else read.result()
                    status = data[9:12].decode(errors="replace") if data.startswith(b"HTTP/") else "closed"
                    self.responses[status] = self.responses.get(status, 0) + 1
                    self.closed_by_server += 1
                    return
                if kind == "slow-body" and not self._stop.is_set():
                    writer.write(b" ")
                    with contextlib.suppress(OSError):
                        await writer.drain()
        finally:
            read.cancel()


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
        stalled = Stalled(url, args.stalled, args.trickle_interval) if args.stalled else None
        if stalled is not None:
            await stalled.start()
        stalled_at_start = stalled.open if stalled else 0
        sampler = RssSampler(pid)
        idle_rss = sampler.process.memory_info().rss if sampler.process else None
        stop = asyncio.Event()
        sampling = asyncio.create_task(sampler.run(stop))
        results: list[tuple[int | str, float, str | None]] = []
        health: list[float] = []
        health_bad: list[str] = []
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
                    r = await client.get("/healthz", timeout=5)
                    health.append(time.perf_counter() - start)
                    if r.status_code != 200 or not r.headers.get("content-type", "").startswith("application/json"):
                        health_bad.append(f"{r.status_code} {r.headers.get('content-type')}")
                except httpx.HTTPError as err:
                    health.append(float("inf"))
                    health_bad.append(type(err).__name__)
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
        stalled_at_end = stalled.open if stalled else 0
        if stalled is not None:
            await stalled.stop()

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
        "healthz_max_s": round(max(health), 4) if health else None,
        "healthz_not_json_200": len(health_bad),
        "healthz_failures": sorted(set(health_bad)),
        "server_idle_rss_mib": round(idle_rss * mib, 1) if idle_rss else None,
        "server_peak_rss_mib": round(max(sampler.samples) * mib, 1) if sampler.samples else None,
        **(
            {
                "stalled": args.stalled,
                "stalled_open_at_start": stalled_at_start,
                "stalled_open_at_end": stalled_at_end,
                "stalled_opened": stalled.opened,
                "stalled_closed_by_server": stalled.closed_by_server,
                "stalled_server_answers": stalled.responses,
                "stalled_connect_errors": stalled.connect_errors,
            }
            if stalled is not None
            else {}
        ),
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
    parser.add_argument("--stalled", type=int, default=0, help="slow/idle connections kept open during the load")
    parser.add_argument("--trickle-interval", type=float, default=2.0, help="seconds between slow-body bytes")
    parser.add_argument("--server-arg", action="append", default=[], help="with --model: extra refine-serve flag")
    parser.add_argument("--json", type=Path, help="also write the report here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from refine_control.cli_utils import check_output, run_cli

    if (code := run_cli(lambda: check_output(args.json) or 0)) != 0:  # an unwritable --json: before the load
        return code
    if args.clients < 1 or args.requests < 1 or args.stalled < 0:
        raise SystemExit("error: --clients and --requests must be ≥ 1, --stalled ≥ 0")
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
        extra += args.server_arg
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
        from refine_control.atomic import write_text

        write_text(args.json, json.dumps(report, indent=2) + "\n")
    healthy = report["healthz_not_json_200"] == 0
    return 0 if report["errors"] == 0 and not report["stopped_early"] and healthy else 1


if __name__ == "__main__":
    sys.exit(main())
