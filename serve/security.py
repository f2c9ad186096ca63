"""`GuardMiddleware`: the checks every request passes before any route sees it (one pure-ASGI middleware).

In order:
0. Without a token, only connections that arrived on a loopback address are served (this also covers
   `uvicorn --factory ... --host 0.0.0.0`, which bypasses `refine-serve`'s refusal to bind such an address).
1. The request target is a path (`/...`), not an absolute URL.
2. Exactly one `Host` header, naming an allowed host (loopback names plus `allowed_hosts`): a web page that
   rebinds its own DNS name to 127.0.0.1 still sends its own name, so it is refused (DNS rebinding).
3. Cross-site requests are refused for the API and for every non-GET method: an `Origin` that is not this
   server's own origin (`null` included), or `Sec-Fetch-Site: cross-site/same-site`. There is no CORS at all.
4. With a token set, `/v1/*` needs `Authorization: Bearer <token>` (constant-time compare; never from the
   query string). The page, `/docs` and `/healthz` stay readable so a person can enter the token.
5. The request body is capped: a larger `Content-Length` is refused before reading. Then the whole body is
   read here, before any route runs (`body.py`: size limit, read deadline, a budget for all bodies held at
   once), so no queue slot ever waits on a client's network; a client that disconnects mid-body is one INFO
   line, never a traceback.
6. `HEAD` is answered wherever `GET` is: the route runs as `GET` and the body is dropped (headers kept).
Every response gets `nosniff`, `no-store`, a strict Content-Security-Policy (no external script, style, image
or connection), no-referrer, and the cross-origin isolation headers (COOP `same-origin`, COEP `require-corp`, CORP
`same-origin`) that WASM threads need on the on-device page (device.py, which sends that page's own CSP). Error bodies are the API's `{"error", "detail"}` and never repeat the request.
"""

import hmac
import json
import logging
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from refine_control.serve.body import (
    BodyBudget,
    ClientGoneError,
    HeldBody,
    body_too_large,
    has_body,
    read_body,
    replay,
)
from refine_control.serve.redact import redact_path
from refine_control.serve.schemas import ApiError
from refine_control.serve.settings import ServeSettings, is_loopback

logger = logging.getLogger(__name__)

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
    "form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"cache-control", b"no-store"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-embedder-policy", b"require-corp"),
    (b"content-security-policy", CSP.encode()),
]
SAFE_METHODS = ("GET", "HEAD")
_ALLOWED_FETCH_SITES = ("same-origin", "none")


def split_host(value: str) -> str | None:
    """`name[:port]` or `[v6][:port]` → the lower-case name (IPv6 without brackets); None if malformed."""
    value = value.strip()
    if not value or any(c in value for c in " /\\@?#"):
        return None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[1:end], value[end + 1 :]
        if rest and not (rest.startswith(":") and rest[1:].isdigit()):
            return None
        return name.lower() or None
    name, sep, port = value.partition(":")
    if sep and not port.isdigit():
        return None
    return name.lower() or None


class GuardMiddleware:
    """See the module docstring."""

    def __init__(self, app: ASGIApp, settings: ServeSettings) -> None:
        self.app = app
        self.allowed = settings.host_allow_list()
        token = settings.token_value
        self.token = token.encode() if token else None
        self.max_body = settings.max_body_bytes
        self.body_timeout = settings.body_timeout_s
        self.budget = BodyBudget(settings.max_buffered_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            self.check(scope)
        except ApiError as err:
            logger.info("refused %s request (%s)", scope.get("method", "?"), err.code)
            await send_error(send, err)
            return

        held = HeldBody(self.budget)
        try:
            if has_body(scope.get("headers", [])):
                try:
                    body = await read_body(receive, self.max_body, self.body_timeout, held)
                except ClientGoneError:
                    path = redact_path(scope.get("path", ""))
                    logger.info(
                        "client disconnected before its request body was complete (%s %s)", scope["method"], path
                    )
                    return
                except ApiError as err:
                    logger.info("refused %s request (%s)", scope.get("method", "?"), err.code)
                    await send_error(send, err)
                    return
                receive = replay(body, receive)
                del body
            await self.app(*_as_get_if_head(scope, receive, send_with_headers(send)))
        finally:
            held.release()

    def check(self, scope: Scope) -> None:
        server = scope.get("server")
        if self.token is None and server and server[1] is not None and not is_loopback(str(server[0])):
            # reached through a non-loopback listener (e.g. `uvicorn --factory --host 0.0.0.0`) without a token
            raise ApiError(403, "token_required", "this server answers other machines only with a token set")
        raw_path = scope.get("raw_path") or scope.get("path", "").encode()
        if not raw_path.startswith(b"/"):
            raise ApiError(400, "bad_request_target", "the request target must be a path")
        headers: dict[bytes, list[bytes]] = {}
        for name, value in scope.get("headers", []):
            headers.setdefault(name.lower(), []).append(value)
        hosts = headers.get(b"host", [])
        if len(hosts) != 1:
            raise ApiError(400, "host_not_allowed", "the request needs exactly one Host header")
        host_value = hosts[0].decode("latin-1")
        host = split_host(host_value)
        if host is None or (self.allowed is not None and host not in self.allowed):
            raise ApiError(400, "host_not_allowed", "the Host header names a host this server does not serve")

        path: str = scope.get("path", "")
        method: str = scope.get("method", "GET")
        api = path.startswith("/v1/") or path == "/v1"
        if api or method not in SAFE_METHODS:
            origin = _single(headers, b"origin")
            if origin is not None and not _same_origin(origin, host_value):
                raise ApiError(403, "cross_origin", "cross-origin requests are not allowed")
            site = _single(headers, b"sec-fetch-site")
            if origin is None and site is not None and site.lower() not in _ALLOWED_FETCH_SITES:
                raise ApiError(403, "cross_origin", "cross-site requests are not allowed")

        if self.token is not None and api:
            auth = _single(headers, b"authorization") or ""
            scheme, _, credentials = auth.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(credentials.strip().encode(), self.token):
                raise ApiError(401, "unauthorized", "a valid bearer token is required", {"WWW-Authenticate": "Bearer"})

        lengths = headers.get(b"content-length", [])
        if lengths:
            try:
                length = int(lengths[0])
            except ValueError:
                raise ApiError(400, "bad_content_length", "Content-Length is not a number") from None
            if length > self.max_body:
                raise body_too_large(self.max_body)


def send_with_headers(send: Send) -> Send:
    """`send`, adding the security headers to the response start."""

    async def send_secured(message: Message) -> None:
        if message["type"] == "http.response.start":
            names = {name.lower() for name, _ in message.get("headers", [])}
            extra = [(k, v) for k, v in SECURITY_HEADERS if k not in names]
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return send_secured


def _as_get_if_head(scope: Scope, receive: Receive, send: Send) -> tuple[Scope, Receive, Send]:
    """A HEAD request runs the GET route; its response keeps status and headers (Content-Length included) and
    ends after the start, whatever the route sends later (a stream stops when it sees the disconnect)."""
    if scope.get("method") != "HEAD":
        return scope, receive, send
    ended = False

    async def send_head(message: Message) -> None:
        nonlocal ended
        if message["type"] == "http.response.start":
            await send(message)
        elif not ended:
            ended = True
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    return {**scope, "method": "GET"}, receive, send_head


def _single(headers: dict[bytes, list[bytes]], name: bytes) -> str | None:
    values = headers.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise ApiError(400, "duplicate_header", "a header that must appear once appears more than once")
    return values[0].decode("latin-1")


def _same_origin(origin: str, host_value: str) -> bool:
    if origin.strip().lower() == "null":
        return False
    try:
        parts = urlsplit(origin.strip())
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host_value.strip().lower()


def error_body(err: ApiError) -> bytes:
    return json.dumps({"error": err.code, "detail": err.detail}).encode()


async def send_error(send: Send, err: ApiError) -> None:
    body = error_body(err)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        *SECURITY_HEADERS,
        *((k.lower().encode(), v.encode()) for k, v in err.headers.items()),
    ]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
