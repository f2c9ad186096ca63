"""uvicorn's h11 protocol with the connection limits `refine-serve` needs against slow and idle clients.

uvicorn (0.54) arms no timer on a connection until it has answered a first request: a socket that sends
nothing, half a request head, or a body one byte at a time stays open for ever, and once `limit_concurrency`
of them are open uvicorn answers every route, `/healthz` included, with a plain-text 503. Measured here: 200 such
sockets held `/healthz` unanswered for the whole 120 s run. `guarded_protocol(settings)` returns a subclass of
uvicorn's `H11Protocol` that adds:

- a deadline for the request head: complete within `header_timeout_s` of the connection opening (or of the
  first byte of the next request on a kept-alive connection), else the socket is closed;
- a deadline for the body: `body_timeout_s` after the head (the guard middleware, which reads bodies, answers
  408 then; this closes the socket a second later in case nothing was reading it);
- a cap of `limit_concurrency` open connections, enforced without locking anyone out: a new connection beyond
  it closes the connection that has been idle longest (no request in progress: nothing or part of a head sent,
  or kept alive between requests); only when every connection is in the middle of a request is the new one
  answered 503 `too_many_connections` with Retry-After, as JSON like every other error.

Idle time between requests on a kept-alive connection stays uvicorn's `timeout_keep_alive`.

`H11Protocol` is not uvicorn's public API (this uses its `conn`, `cycle`, `connections`, `transport` and
`on_response_complete`): pyproject.toml pins `[serve]` to the uvicorn releases the slow-client tests passed with.
"""

import asyncio
import logging
import time
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from refine_control.serve.schemas import ApiError
from refine_control.serve.security import send_error
from refine_control.serve.settings import ServeSettings

logger = logging.getLogger(__name__)

BODY_GRACE_S = 1.0  # the middleware's 408 goes out first


async def too_many_connections(scope: Any, receive: Any, send: Any) -> None:
    """The ASGI app a connection gets when the cap is reached and no idle connection can make room."""
    err = ApiError(
        503, "too_many_connections", "the server has too many open connections; retry", {"Retry-After": "1"}
    )
    await send_error(send, err)


def guarded_protocol(settings: ServeSettings) -> type[H11Protocol]:
    """An `H11Protocol` subclass with the limits of `settings` (pass it as `uvicorn.Config(http=...)`)."""
    head_s, body_s, cap = settings.header_timeout_s, settings.body_timeout_s + BODY_GRACE_S, settings.limit_concurrency

    class GuardedH11Protocol(H11Protocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._timer: asyncio.TimerHandle | None = None
            self._phase: str | None = None  # "head" or "body" while a deadline runs
            self._idle_since = time.monotonic()

        # -- deadlines ----------------------------------------------------------------------------------------
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm("head")
            if len(self.connections) > cap:
                self._make_room()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._follow_request()

        def on_response_complete(self) -> None:
            self._idle_since = time.monotonic()
            super().on_response_complete()
            self._follow_request()  # a pipelined request may have been parsed just now

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _follow_request(self) -> None:
            if self.transport is None or self.transport.is_closing():
                self._disarm()
                return
            state = self.conn.their_state
            if state is h11.IDLE:
                if self._phase != "head" and self._receiving_head():
                    self._arm("head")  # the first byte of a new request on a kept-alive connection
            elif state is h11.SEND_BODY:
                if self._phase != "body":
                    self._arm("body")
            else:
                self._disarm()

        def _receiving_head(self) -> bool:
            return bool(self.conn.trailing_data[0]) or self._phase == "head"

        def _arm(self, phase: str) -> None:
            self._disarm()
            self._phase = phase
            self._timer = self.loop.call_later(head_s if phase == "head" else body_s, self._expired, phase)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
            self._timer, self._phase = None, None

        def _expired(self, phase: str) -> None:
            if self._phase != phase or self.transport.is_closing():
                return
            logger.debug("closing a connection: its request %s did not arrive in time", phase)
            self._phase = self._timer = None
            self.transport.close()

        # -- the connection cap -------------------------------------------------------------------------------
        def _idle(self) -> bool:
            """No request in progress (nothing or part of a head received, or between requests)."""
            return self.conn.their_state is h11.IDLE and (self.cycle is None or self.cycle.response_complete)

        def _make_room(self) -> None:
            idle = [c for c in self.connections if c is not self and isinstance(c, GuardedH11Protocol) and c._idle()]
            if idle:
                victim = min(idle, key=lambda c: c._idle_since)
                logger.debug("connection cap reached: closing the connection idle longest")
                victim._disarm()
                victim.transport.close()
            else:
                logger.warning("connection cap (%d) reached with every connection busy: answering 503", cap)
                self.app = too_many_connections

    return GuardedH11Protocol
