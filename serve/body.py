"""Read a request body completely before any route runs: size limit, read deadline, memory budget.

Why before the routes: a queue slot (or anything else shared) must never wait on a client's network. A body
must arrive whole within `body_timeout_s` (else 408) and within `max_body_bytes` (else 413, also for chunked
bodies), and the bodies held at once stay within `max_buffered_bytes` in total (else 503 + Retry-After), so a
crowd of uploads cannot exhaust memory either. Bytes are counted as they arrive, not as announced, so a
trickling client holds almost nothing. The route then receives the body in one piece. A client that goes away
mid-body ends its request quietly (`ClientGoneError`; the middleware logs one INFO line).
"""

import asyncio
import threading

from starlette.types import Message, Receive

from refine_control.serve.schemas import ApiError


class ClientGoneError(Exception):
    """The client disconnected before its request body was complete."""


class BodyBudget:
    """Bytes of request bodies held at once, across all requests (thread-safe counter)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> bool:
        with self._lock:
            if self.used + n > self.limit:
                return False
            self.used += n
            return True

    def give(self, n: int) -> None:
        with self._lock:
            self.used -= n


class HeldBody:
    """The share of the budget one request holds; `release()` returns it (idempotent)."""

    def __init__(self, budget: BodyBudget) -> None:
        self.budget = budget
        self.bytes = 0

    def grow(self, n: int) -> bool:
        if not self.budget.take(n):
            return False
        self.bytes += n
        return True

    def release(self) -> None:
        self.budget.give(self.bytes)
        self.bytes = 0


def has_body(headers: list[tuple[bytes, bytes]]) -> bool:
    """A request announces a body with a non-zero Content-Length or any Transfer-Encoding."""
    for name, value in headers:
        name = name.lower()
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() not in (b"", b"0")):
            return True
    return False


async def read_body(receive: Receive, max_bytes: int, timeout_s: float, held: HeldBody) -> bytes:
    """The whole body, or `ApiError` 408 / 413 / 503, or `ClientGoneError`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    chunks: list[bytes] = []
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise body_timeout(timeout_s)
        try:
            message = await asyncio.wait_for(receive(), remaining)
        except asyncio.TimeoutError:  # the builtin TimeoutError only from Python 3.11
            raise body_timeout(timeout_s) from None
        if message["type"] == "http.disconnect":
            raise ClientGoneError()
        chunk = message.get("body", b"")
        if held.bytes + len(chunk) > max_bytes:
            raise body_too_large(max_bytes)
        if chunk and not held.grow(len(chunk)):
            raise ApiError(
                503, "busy", "the server is receiving too many request bodies; retry later", {"Retry-After": "1"}
            )
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def body_too_large(limit: int) -> ApiError:
    return ApiError(413, "body_too_large", f"the request body is larger than {limit} bytes")


def body_timeout(timeout_s: float) -> ApiError:
    return ApiError(408, "body_timeout", f"the request body did not arrive within {timeout_s:g} s")


def replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that yields the buffered body first, then whatever the connection says (e.g. disconnect)."""
    sent = False

    async def receive_buffered() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return receive_buffered
