"""`refine-serve` as a real process over the real tiny model: no torch, no outbound connection, no prompt or image
in logs or on disk, loopback-only listeners, raw-HTTP edge cases, overload, and graceful shutdown (exit code 0)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
from serve_helpers import REPO, b64, png_bytes, raw_http, start_server

from refine_control.serve.cli import main

CANARY = "qx-canary-5d0c2a9e"


def test_server_modules_import_no_torch(tiny_model_dir):
    code = (
        "import sys\n"
        "from refine_control.serve.cli import main\n"
        "from refine_control.serve.app import create_app\n"
        "from refine_control.serve.engine import OnnxEngine, warm_up\n"
        f"warm_up(OnnxEngine({str(tiny_model_dir)!r}))\n"
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_audit_hook_records_and_blocks_outbound(tmp_path):
    """The privacy check's own check: a connect to TEST-NET-1 and a DNS lookup are recorded (and never sent)."""
    code = (
        "import audit_run, socket\n"
        "for attempt in (lambda: socket.socket().connect(('192.0.2.1', 9)),"
        " lambda: socket.getaddrinfo('example.invalid', 80), lambda: socket.create_connection(('127.0.0.1', 9))):\n"
        "    try: attempt()\n"
        "    except OSError: pass\n"
    )
    env = {**os.environ, "AUDIT_REPORT": str(tmp_path / "audit.json"), "PYTHONPATH": str(Path(__file__).parent)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
    audit = json.loads((tmp_path / "audit.json").read_text())
    assert audit["connect"] == ["('192.0.2.1', 9)"] and audit["getaddrinfo"] == ["'example.invalid'"]


def canary_image() -> tuple[bytes, bytes]:
    """A PNG whose pixels spell a unique pattern, and a fragment of its compressed bytes to search for."""
    rng = np.random.default_rng(int.from_bytes(CANARY.encode()[:4], "big"))
    data = png_bytes(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    return data, data[60:92]


def scan_for(root: Path, needles: list[bytes], skip: set[Path], since: float | None = None) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path in skip or not path.is_file() or path.is_symlink():
            continue
        try:
            if since is not None and path.stat().st_mtime < since:
                continue
            data = path.read_bytes()
        except OSError:
            continue
        hits += [f"{path}: {needle[:20]!r}" for needle in needles if needle in data]
    return hits


def test_privacy_exposure_and_lifecycle(tiny_model_dir, tmp_path):
    started = time.time()
    server = start_server(tiny_model_dir, tmp_path / "srv", "--log-level", "debug", "--queue-size", "2")
    image, image_fragment = canary_image()
    try:
        # N1: every listener of the process is on loopback
        listeners = [c for c in psutil.Process(server.proc.pid).net_connections("inet") if c.status == "LISTEN"]
        assert listeners and all(c.laddr.ip in ("127.0.0.1", "::1") for c in listeners)

        with server.client() as client:
            req = {"prompt": f"a circle {CANARY}", "negative_prompt": CANARY, "control_image": b64(image)}
            first = client.post("/v1/generate", json={**req, "steps": 3, "seed": 7})
            assert first.status_code == 200
            assert client.post("/v1/generate", json={**req, "steps": 3, "seed": 7}).content == first.content
            job = client.post("/v1/jobs", json={**req, "steps": 3}).json()["id"]
            with client.stream("GET", f"/v1/jobs/{job}/events") as stream:
                assert b"done" in stream.read()
            assert client.get(f"/v1/jobs/{job}/result").status_code == 200
            photo = {"prompt": CANARY, "image": b64(image), "preprocessor": "lineart", "steps": 2}
            assert client.post("/v1/generate", json=photo).status_code == 200
            assert client.post("/v1/preprocess", json={"image": b64(image)}).status_code == 200
            # refused requests carrying the canary in every place a client controls
            assert client.post("/v1/generate", json={**req, "prompt": CANARY * 100}).status_code == 422
            assert client.post("/v1/generate", json={**req, CANARY: 1}).status_code == 422
            assert client.post("/v1/generate", json={**req, "control_image": b64(image[:200])}).status_code == 400
            bad_host = client.get("/v1/models", headers={"Host": f"{CANARY}.example"})
            assert bad_host.status_code == 400

        # raw HTTP: absolute-form target and HTTP/1.0 without Host → 4xx; a huge header → no 5xx; the server lives on
        answer = raw_http(server.port, b"GET http://evil.example/healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 4")
        assert raw_http(server.port, b"GET /healthz HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.1 400")
        big = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n"
        answer = raw_http(server.port, big)
        assert answer == b"" or answer[9:10] in b"24"  # refused, or served: never a 5xx
        assert httpx.get(f"{server.url}/healthz").status_code == 200

        # the bounded load script against this server: overload answers 503 + Retry-After, nothing else
        report_path = tmp_path / "load.json"
        load = [sys.executable, str(REPO / "benchmarks" / "load.py"), "--url", server.url]
        load += ["--pid", str(server.proc.pid), "--clients", "8", "--requests", "24", "--steps", "2"]
        load += ["--json", str(report_path), "--max-seconds", "120"]
        subprocess.run(load, check=True, capture_output=True, timeout=180)
        report = json.loads(report_path.read_text())
        assert report["errors"] == 0 and report["ok"] >= 1
        assert report["rejected_503"] == report["rejected_with_retry_after"]
        assert report["ok"] + report["rejected_503"] == 24
    finally:
        code = server.stop()
    assert code == 0, server.log()

    audit = server.report()
    assert audit["connect"] == [] and audit["getaddrinfo"] == [] and audit["sendto"] == [], audit
    assert audit["torch_imported"] is False and audit["diffusers_imported"] is False

    log = server.log()
    assert "DEBUG" in log and "POST /v1/generate" in log  # the log was really at debug level
    needles = [CANARY.encode(), image_fragment, b64(image)[100:140].encode()]
    assert not [n for n in needles if n in log.encode()], "canary found in the server log"
    skip = {server.log_path, server.report_path, report_path}
    assert scan_for(tmp_path, needles, skip) == []  # HOME, TMPDIR and cwd of the server
    repo_hits = [
        hit
        for hit in scan_for(REPO, needles, set(), since=started)
        if "/.git/" not in hit and "/.venv/" not in hit and "/tests/serve/" not in hit
    ]
    assert repo_hits == []


def test_graceful_shutdown_finishes_or_refuses_clearly(tiny_model_dir, tmp_path):
    server = start_server(tiny_model_dir, tmp_path / "srv", "--queue-size", "4", "--no-access-log")
    results: list = []
    control = b64(png_bytes())

    def call(i: int) -> None:
        body = {"prompt": "x", "control_image": control, "steps": 50, "width": 32, "height": 32, "seed": i}
        try:
            r = httpx.post(f"{server.url}/v1/generate", json=body, timeout=60)
            results.append((r.status_code, r.json()["error"] if r.status_code != 200 else None))
        except httpx.HTTPError as err:
            results.append((type(err).__name__, None))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(5)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and httpx.get(f"{server.url}/readyz").json().get("running", 0) == 0:
        time.sleep(0.02)
    server.proc.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(60)
    start = time.monotonic()
    # It was told to stop above: wait for it rather than signal again (a second SIGTERM that lands while the
    # interpreter finalises, after its handlers are gone, would kill it with -15).
    code = server.proc.wait(35)
    assert server.stop() == code == 0 and time.monotonic() - start < 35, server.log()
    assert len(results) == 5
    assert all(r in ((200, None), (503, "shutting_down")) for r in results), results
    assert (200, None) in results  # the running one finished
    try:
        httpx.get(f"{server.url}/healthz", timeout=2)
        raise AssertionError("still accepting connections after exit")
    except httpx.ConnectError:
        pass


def test_corrupt_model_dir_refused_before_binding(tiny_model_dir, tmp_path, capsys):
    broken = tmp_path / "model"
    shutil.copytree(tiny_model_dir, broken)
    graph = broken / "denoiser.onnx"
    graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])
    start = time.monotonic()
    assert main([str(broken), "--port", "1"]) == 2
    assert time.monotonic() - start < 10
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "truncated" in err and "Traceback" not in err
