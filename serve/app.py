"""`create_app`: the FastAPI application of `refine-serve`.

Run it with `refine-serve MODEL` (which loads the model before binding and refuses unsafe binds), or with
`REFINE_SERVE_MODEL_DIR=MODEL uvicorn --factory refine_control.serve.app:create_app` (loopback only).
"""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from refine_control import __version__
from refine_control.serve.deps import validation_detail
from refine_control.serve.device import URL as DEVICE_URL
from refine_control.serve.device import DeviceFiles, DeviceFolder, DeviceOff, prepare_device
from refine_control.serve.engine import Engine, load_engine
from refine_control.serve.jobs import JobManager
from refine_control.serve.redact import install_access_log_redaction, redact_path
from refine_control.serve.routes import api_router, health, page
from refine_control.serve.routes.page import STATIC_DIR
from refine_control.serve.schemas import ApiError
from refine_control.serve.security import GuardMiddleware
from refine_control.serve.settings import ServeSettings, get_settings

logger = logging.getLogger(__name__)

DESCRIPTION = (
    "Generate images with a distilled ControlNet student on this device. Nothing leaves the machine: no outbound "
    "connection, no prompt or image in logs or on disk, PNGs without metadata. Errors are "
    '`{"error": code, "detail": one line}`.'
)
NO_TELEMETRY = {
    "tracing": False,
    "metrics": False,
    "logs": False,
    "operation_spans": False,
    "auto_configure": False,
}
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


def _error(err: ApiError) -> JSONResponse:
    return JSONResponse({"error": err.code, "detail": err.detail}, status_code=err.status, headers=err.headers)


def install_error_handlers(app: FastAPI) -> None:
    """Map every failure to the `{"error", "detail"}` contract, without repeating the request."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError) -> JSONResponse:
        if err.status >= 500:
            logger.warning("%s %s → %d %s", request.method, redact_path(request.url.path), err.status, err.code)
        return _error(err)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, err: RequestValidationError) -> JSONResponse:
        return _error(validation_detail(err))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(err.status_code, "http_error")
        detail = "no such endpoint" if err.status_code == 404 else code.replace("_", " ")
        return _error(ApiError(err.status_code, code, detail, dict(err.headers or {})))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception) -> JSONResponse:
        logger.error("unexpected %s on %s %s", type(err).__name__, request.method, redact_path(request.url.path))
        return _error(ApiError(500, "internal_error", "the server failed on this request; it is still up"))


def create_app(
    settings: ServeSettings | None = None, engine: Engine | None = None, device: DeviceFolder | None = None
) -> FastAPI:
    """Build the app. Without `engine`, the lifespan loads (and warms up) `settings.model_dir`; without `device`,
    the browser folder of `settings.web_dir` is prepared here (device.py)."""
    settings = settings or get_settings()
    if device is None:
        device = prepare_device(settings.model_dir, settings.web_dir, settings.threads)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loaded = engine
        if loaded is None:
            loaded = await run_in_threadpool(load_engine, settings)
        app.state.engine = loaded
        app.state.jobs = JobManager(loaded, settings)
        try:
            yield
        finally:
            await run_in_threadpool(app.state.jobs.close, min(settings.graceful_shutdown_s, 5.0))

    app = FastAPI(
        title="refine-serve",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # /docs is our own offline page (see routes/page.py)
        redoc_url=None,
        # FastAPI's native OpenTelemetry would export spans/logs (validation failures with their messages) to an
        # OTLP endpoint when FASTAPI_OTEL_AUTO_CONFIGURE=true or a global provider exists: off, whatever the env.
        telemetry=NO_TELEMETRY,
    )
    app.state.settings = settings
    app.state.device = device
    install_access_log_redaction()  # job ids are capabilities: never in the access log
    app.state.engine = None
    app.state.jobs = None
    app.add_middleware(GuardMiddleware, settings=settings)
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(api_router)
    app.include_router(page.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.mount(DEVICE_URL.rstrip("/"), DeviceFiles(device) if device.available else DeviceOff(device), name="device")
    return app
