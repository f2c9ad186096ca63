"""Helpers for the server tests: images, a live `refine-serve` process with an audit hook, raw HTTP."""

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def png_bytes(array: np.ndarray | None = None, size: tuple[int, int] = (64, 64), fmt: str = "PNG", **save) -> bytes:
    if array is None:
        array = np.zeros((size[1], size[0], 3), np.uint8)
        array[size[1] // 4 : size[1] // 2, size[0] // 4 : 3 * size[0] // 4] = 255
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **save)
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def png_chunks(data: bytes) -> list[bytes]:
    """The chunk types of a PNG file, in order."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, types = 8, []
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        types.append(data[pos + 4 : pos + 8])
        pos += 12 + length
    return types


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LiveServer:
    """A `refine-serve` subprocess run under `audit_run.py` (records socket connects, torch imports)."""

    proc: subprocess.Popen
    port: int
    root: Path
    report_path: Path
    log_path: Path
    token: str | None = None
    _log: object = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, **kwargs) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60, **kwargs)

    def stop(self, timeout: float = 40) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(10)
        if self._log is not None:
            self._log.close()
        return code

    def report(self) -> dict:
        return json.loads(self.report_path.read_text())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(
    model_dir: Path,
    root: Path,
    *args: str,
    env: dict | None = None,
    token: str | None = None,
    python: str = sys.executable,
) -> LiveServer:
    """Start `refine-serve MODEL --port P` with HOME, TMPDIR and cwd under `root` (in `python`'s environment);
    wait until /healthz answers."""
    for sub in ("home", "tmp", "cwd"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    port = free_port()
    report, log_path = root / "audit.json", root / "server.log"
    full_env = {
        k: v for k, v in os.environ.items() if not k.startswith("REFINE_SERVE_") and k not in ("PYTEST_CURRENT_TEST",)
    }
    full_env.update(
        HOME=str(root / "home"),
        TMPDIR=str(root / "tmp"),
        XDG_CACHE_HOME=str(root / "home" / ".cache"),
        PYTHONUNBUFFERED="1",
        AUDIT_REPORT=str(report),
    )
    if token:
        full_env["REFINE_SERVE_TOKEN"] = token
    full_env.update(env or {})
    log = open(log_path, "wb")  # noqa: SIM115 (closed in LiveServer.stop)
    proc = subprocess.Popen(
        [python, str(HERE / "audit_run.py"), str(model_dir), "--port", str(port), *args],
        cwd=root / "cwd",
        env=full_env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = LiveServer(proc, port, root, report, log_path, token, log)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"refine-serve exited with {proc.returncode}:\n{server.log()}")
        try:
            if httpx.get(f"{server.url}/healthz", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"refine-serve did not come up:\n{server.log()}")


def raw_http(port: int, request: bytes, timeout: float = 10) -> bytes:
    """Send raw bytes to 127.0.0.1:port; return everything the server answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks) and len(b"".join(chunks)) > 16 and _complete(b"".join(chunks)):
                    break
        except (ConnectionResetError, TimeoutError):
            pass
    return b"".join(chunks)


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":", 1)[1])
    return False
