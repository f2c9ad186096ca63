"""Slow and idle clients cannot deny service: a real `refine-serve` process, raw sockets playing the attacker.

Checked: with 200 stalled connections open (idle, half a request head, a body trickling in), a normal generation
succeeds and `/healthz` answers JSON within 1 s; stalled sockets are dropped after the head/body deadlines
(408 JSON for a late body); beyond the connection cap the longest-idle socket makes room, and when every
connection is busy the answer is a JSON 503 with Retry-After; a client that disconnects mid-body is one INFO
line; job ids never reach the access log.
"""

import json
import socket
import time

import httpx
import psutil
from serve_helpers import b64, png_bytes, start_server

KINDS = ("idle", "partial-head", "slow-body")


def stall(port: int, kind: str) -> socket.socket:
    """A connection that sends nothing, half a request line, or a head announcing a body it never sends."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    if kind == "partial-head":
        s.sendall(b"GET /healthz HT")
    elif kind == "slow-body":
        head = f"POST /v1/generate HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        s.sendall(head.encode() + b"Content-Length: 1000000\r\n\r\n{")
    return s


def closed_by_server(s: socket.socket, wait: float) -> bytes | None:
    """What the server sent before closing `s` within `wait` seconds, or None if it is still open."""
    s.settimeout(wait)
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return data


def established(pid: int, port: int) -> int:
    conns = psutil.Process(pid).net_connections("tcp")
    return sum(1 for c in conns if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port)


def generate_body(**extra) -> dict:
    return {"prompt": "a red circle", "control_image": b64(png_bytes()), "steps": 2, "seed": 1, **extra}


def test_200_stalled_connections_do_not_deny_service(tiny_model_dir, tmp_path):
    # Deadlines longer than the test, so all 200 stay open while it measures (the next test checks the deadlines).
    args = ("--header-timeout", "60", "--body-timeout", "60", "--no-warmup")
    server = start_server(tiny_model_dir, tmp_path / "srv", *args)
    sockets: list[socket.socket] = []
    try:
        sockets = [stall(server.port, KINDS[i % 3]) for i in range(200)]
        deadline = time.monotonic() + 10
        while established(server.proc.pid, server.port) < 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert established(server.proc.pid, server.port) >= 200

        with httpx.Client(base_url=server.url, timeout=30) as client:
            for _ in range(5):
                start = time.monotonic()
                health = client.get("/healthz")
                assert time.monotonic() - start < 1.0
                assert health.status_code == 200 and health.json() == {"status": "ok"}
            # 67 slow bodies and the queue holds 5: none of them took a slot, so this one runs
            r = client.post("/v1/generate", json=generate_body())
            assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        assert established(server.proc.pid, server.port) >= 200  # measured with all of them still open
        assert all(closed_by_server(s, 0.01) is None for s in sockets)
    finally:
        for s in sockets:
            s.close()
        code = server.stop()
    assert code == 0, server.log()


def test_deadlines_cap_disconnects_and_access_log(tiny_model_dir, tmp_path):
    args = ("--header-timeout", "2", "--body-timeout", "2", "--limit-concurrency", "8", "--no-warmup")
    server = start_server(tiny_model_dir, tmp_path / "srv", *args, "--log-level", "debug")
    try:
        # 1. deadlines: nothing, half a head, a body trickling in → closed; the late body gets a JSON 408
        started = time.monotonic()
        idle, partial, slow = (stall(server.port, kind) for kind in KINDS)
        for _ in range(3):
            time.sleep(0.5)
            slow.sendall(b" ")
        assert closed_by_server(idle, 5) == b"" and closed_by_server(partial, 5) == b""
        answer = closed_by_server(slow, 5)
        assert answer is not None and answer.startswith(b"HTTP/1.1 408")
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"] == "body_timeout"
        assert time.monotonic() - started < 8

        # 2. the cap (8): 8 idle sockets, then a real client gets in (the longest-idle socket makes room)
        idle_sockets = [stall(server.port, "idle") for _ in range(8)]
        time.sleep(0.2)
        r = httpx.get(f"{server.url}/healthz", timeout=5)
        assert r.status_code == 200 and r.json() == {"status": "ok"}
        assert closed_by_server(idle_sockets[0], 1) == b""  # the oldest was closed
        for s in idle_sockets:
            s.close()
        time.sleep(0.3)

        # 3. every connection busy with a request (slow bodies): a new one gets JSON 503 + Retry-After, not text
        busy = [stall(server.port, "slow-body") for _ in range(8)]
        time.sleep(0.3)
        r = httpx.get(f"{server.url}/healthz", timeout=5)
        assert r.status_code == 503 and r.json()["error"] == "too_many_connections" and r.headers["retry-after"]
        for s in busy:
            s.close()
        time.sleep(0.5)

        # 4. a client that disconnects mid-body; a job whose id must not reach the access log
        s = stall(server.port, "slow-body")
        time.sleep(0.2)
        s.close()
        with server.client() as client:
            job = client.post("/v1/jobs", json=generate_body()).json()["id"]
            with client.stream("GET", f"/v1/jobs/{job}/events") as stream:
                assert b"done" in stream.read()
            assert client.get(f"/v1/jobs/{job}/result").status_code == 200
            assert client.head(f"/v1/jobs/{job}/result").status_code == 200
            assert client.get("/healthz").status_code == 200
    finally:
        code = server.stop()
    assert code == 0, server.log()
    log = server.log()
    # one INFO line per client that left mid-body: the 8 busy sockets closed in step 3 and the one of step 4
    assert log.count("INFO refine_control.serve.security: client disconnected before its request body") == 9, log
    assert "Traceback" not in log and " ERROR " not in log, log
    assert job not in log and "/v1/jobs/<job>/result" in log
