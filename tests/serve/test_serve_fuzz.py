"""Fuzz: 600 seeded random bodies (JSON mutations, broken JSON, multipart, odd content types) on every POST route.

Pass: no 5xx, every refusal is the `{"error", "detail"}` contract, and nothing is logged at ERROR or with a
traceback. A seeded generator (not hypothesis) keeps the cases identical run to run; a failure prints its
index and seed so it can be replayed with `fuzz_cases(SEED)[i]`.
"""

import json
import logging
import random
import re

import pytest
from serve_client import make_client
from serve_fakes import FakeEngine
from serve_helpers import b64, png_bytes

SEED = 20260512
CASES = 600
ROUTES = ("/v1/generate", "/v1/jobs", "/v1/preprocess")
FIELDS = ("prompt", "negative_prompt", "control_image", "image", "preprocessor", "steps", "guidance_scale")
FIELDS += ("controlnet_scale", "seed", "width", "height", "response_format")


def _valid(rng: random.Random) -> dict:
    body = {"prompt": "a red circle", "control_image": b64(png_bytes(size=(32, 32))), "steps": 1, "seed": 1}
    if rng.random() < 0.3:
        body = {"prompt": "p", "image": b64(png_bytes(size=(32, 32))), "preprocessor": "canny", "steps": 2}
    return body


def _value(rng: random.Random, depth: int = 0):
    kind = rng.randrange(16)
    if kind == 0:
        return f"__digits_{rng.choice((20, 400, 4301, 5000, 20000))}__"  # an integer literal, see _raw_json
    if kind == 1:
        return rng.choice((0, -1, 1, 2**31, 2**32, 2**63, 2**64, -(2**63), 10**30))
    if kind == 2:
        return rng.choice((0.5, -0.0, 1e308, -1e308, 1e-320, 3.0, 7.5))
    if kind == 3:
        return rng.choice(
            ("", "x" * rng.choice((1, 999, 1001, 70_000)), "\u0000", "\ud800", "\u202e\u200b", "é" * 500)
        )
    if kind == 4:
        return rng.choice((True, False, None))
    if kind == 5 and depth < 3:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if kind == 6 and depth < 3:
        return {rng.choice(FIELDS): _value(rng, depth + 1) for _ in range(rng.randrange(4))}
    if kind == 7:
        return rng.choice(("data:image/png;base64," + b64(png_bytes(size=(16, 16))), "not base64!!", "===="))
    if kind == 8:
        return b64(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))))
    if kind == 9:
        data = png_bytes(size=(32, 32))
        return b64(data[: rng.randrange(1, len(data))])
    if kind == 10:
        return rng.choice(("canny", "lineart", "shuffle", "inpaint", "aux:hed", "CANNY", "png", "b64_json"))
    return rng.choice((1, 8, 16, 24, 32, 64, 2048, 4096, 50, 51))


def _raw_json(rng: random.Random) -> bytes:
    body = _valid(rng)
    for _ in range(rng.randrange(1, 4)):
        action = rng.randrange(4)
        if action == 0:
            body[rng.choice(FIELDS)] = _value(rng)
        elif action == 1 and body:
            body.pop(rng.choice(list(body)))
        elif action == 2:
            body[rng.choice(("extra", "Prompt", "steps ", "__proto__"))] = _value(rng)
        else:
            body[rng.choice(FIELDS)] = _value(rng)
    text = json.dumps(body, ensure_ascii=rng.random() < 0.5)
    # integer literals longer than Python's int-digits limit (4300) cannot be built as ints: spliced in as text
    text = re.sub(r'"__digits_(\d+)__"', lambda m: "9" * int(m.group(1)), text)
    for token, raw in (("1e308", "Infinity"), ("-1e308", "-Infinity"), ("0.5", "NaN")):
        if rng.random() < 0.3:
            text = text.replace(token, raw)
    return text.encode("utf-8", "surrogatepass")  # a lone surrogate as raw (invalid) UTF-8 bytes


def _broken(rng: random.Random) -> bytes:
    base = _raw_json(rng)
    kind = rng.randrange(9)
    if kind == 0:
        return base[: rng.randrange(len(base))]
    if kind == 1:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
    if kind == 2:
        return b"[" * rng.choice((10, 1000, 5000, 100_000)) + b"]" * rng.choice((0, 10))
    if kind == 3:
        return b'{"prompt": "p", "prompt": "q", "control_image": "x"}'
    if kind == 4:
        return b"\xef\xbb\xbf" + base  # UTF-8 BOM
    if kind == 5:
        return base.replace(b'"', b"\xff", 1)
    if kind == 6:
        return rng.choice((b"", b"null", b"[]", b"1", b'"x"', b"true", b" " * 100_000))
    if kind == 7:
        return b'{"steps": ' + b"1" * rng.choice((4301, 5000, 50_000)) + b', "prompt": "p"}'
    return base + b"garbage"


def _multipart(rng: random.Random) -> tuple[bytes, str]:
    boundary = rng.choice(("b", "----x" * 10, "a" * 70, "\\\\\\" * 20 + "a"))
    parts = []
    for _ in range(rng.randrange(0, 6)):
        name = rng.choice((*FIELDS, "file", ""))
        value = rng.choice((b"p", b"1", png_bytes(size=(16, 16)), bytes(rng.randrange(256) for _ in range(50))))
        disposition = f'form-data; name="{name}"' + ('; filename="a.png"' if rng.random() < 0.5 else "")
        parts.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n")
    body = b"".join(parts) + (f"--{boundary}--\r\n".encode() if rng.random() < 0.8 else b"")
    return body, f"multipart/form-data; boundary={boundary}"


def fuzz_cases(seed: int = SEED, n: int = CASES) -> list[tuple[str, bytes, str]]:
    """(route, body, content type) for each case."""
    rng = random.Random(seed)
    cases = []
    for _ in range(n):
        route = rng.choice(ROUTES)
        pick = rng.random()
        if pick < 0.55:
            body, content_type = _raw_json(rng), "application/json"
        elif pick < 0.8:
            body, content_type = _broken(rng), "application/json"
        elif pick < 0.92:
            body, content_type = _multipart(rng)
        else:
            body = _raw_json(rng)
            content_type = rng.choice(("text/plain", "", "application/json; charset=latin-1", "APPLICATION/JSON"))
        cases.append((route, body, content_type))
    return cases


@pytest.fixture
def fuzz_client():
    # A long queue: the fuzz checks input handling, not overload (that is test_serve_queue.py).
    with make_client(FakeEngine(), queue_size=1024, max_finished_jobs=4) as client:
        yield client


def test_random_bodies_never_give_a_5xx_or_a_traceback(fuzz_client, caplog):
    caplog.set_level(logging.DEBUG)
    statuses: dict[int, int] = {}
    for i, (route, body, content_type) in enumerate(fuzz_cases()):
        headers = {"Content-Type": content_type} if content_type else {}
        r = fuzz_client.post(route, content=body, headers=headers)
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        assert r.status_code < 500, f"case {i} (seed {SEED}) on {route}: {r.status_code} {r.text[:200]}"
        if r.status_code >= 400:
            data = r.json()
            assert set(data) <= {"error", "detail", "fields"} and data["error"], f"case {i}: {data}"
        assert "Traceback" not in r.text
    assert sum(statuses.values()) == CASES >= 500
    assert {400, 415, 422} <= set(statuses) and statuses.get(200, 0) + statuses.get(202, 0) > 0
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert bad == [], [r.getMessage() for r in bad[:5]]
