"""`refine-serve MODEL`: serve an exported model on this machine (REST API + web page), private by default.

Settings come from flags, then `REFINE_SERVE_*` environment variables, then defaults (see `ServeSettings`).
The model is loaded and warmed up before the port is bound, so a broken model dir ends the command at once with
one `error:` line (and a `hint:`, exit code 2) instead of leaving a half-alive server.
"""

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from pydantic import ValidationError

from refine_control.cli_parser import add_verbosity, new_parser
from refine_control.cli_utils import run_cli
from refine_control.errors import ConfigError, RefineError
from refine_control.serve.device import BESIDE_MODEL, beside_model, prepare_device
from refine_control.serve.device import URL as DEVICE_URL

logger = logging.getLogger("refine_control.serve")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def build_parser() -> argparse.ArgumentParser:
    from refine_control.serve.settings import ServeSettings

    fields = ServeSettings.model_fields

    def setting(name: str, text: str | None = None, default: str | None = None) -> str:
        """Help from the setting's own description and default (one source for flags, env and docs)."""
        field = fields[name]
        shown = default if default is not None else field.default
        return f"{text or field.description}. Default: {shown}"

    parser = new_parser(
        "refine-serve",
        description="Serve a refine-export model dir on this machine: REST API under /v1, a web page at /, "
        "the API reference at /docs. Binds 127.0.0.1 unless told otherwise.",
        epilog="Every option can also be set as an environment variable REFINE_SERVE_<NAME> "
        "(e.g. REFINE_SERVE_TOKEN, which keeps the token out of the process list).",
    )
    p = parser.add_argument
    p("model_dir", metavar="MODEL", nargs="?", type=Path, help="a `refine-export` output dir")
    p("--host", help=setting("host", "address to bind; anything but loopback needs --token"))
    p("--port", type=int, help=setting("port", "port to bind"))
    p("--token", help="require `Authorization: Bearer TOKEN` on /v1 (prefer REFINE_SERVE_TOKEN). Default: none")
    p("--token-file", type=Path, help="read the token from the first line of this file")
    p(
        "--allowed-host",
        dest="allowed_hosts",
        action="append",
        metavar="NAME",
        help=setting("allowed_hosts", "also accept this Host header name (repeatable)", "the loopback names only"),
    )
    p("--precision", choices=("auto", "fp32", "int8", "fp16"), help=setting("precision"))
    p("--model-format", choices=("onnx", "ort"), help=setting("model_format"))
    p("--scheduler", help=setting("scheduler", default="the model's"))
    p("--threads", type=int, help=setting("threads", "ONNX Runtime intra-op threads", "all CPUs"))
    p("--workers", type=int, help=setting("workers"))
    p("--queue-size", type=int, help=setting("queue_size"))
    p(
        "--max-queue-wait",
        dest="max_queue_wait_s",
        type=float,
        help=setting("max_queue_wait_s", "seconds a job may wait before it fails with 503"),
    )
    p(
        "--web",
        dest="web_dir",
        nargs="?",
        const=BESIDE_MODEL,
        type=Path,
        metavar="DIR",
        help="on-device mode: serve the model's browser folder at /device/, where it runs in the browser and nothing "
        "is sent here. DIR is served when it holds this model's folder, written from MODEL when new or empty (needs "
        "`npm ci --prefix web`). Default DIR: MODEL's name + '-web', as refine-export --web writes",
    )
    p(
        "--request-timeout",
        dest="request_timeout_s",
        type=float,
        help=setting("request_timeout_s", "seconds a generation may run before it fails with 504"),
    )
    p("--max-output-side", type=int, help=setting("max_output_side", "largest width/height", "2 × the model's"))
    p(
        "--graceful-shutdown",
        dest="graceful_shutdown_s",
        type=float,
        help=setting("graceful_shutdown_s", "seconds in-flight requests may take to finish at exit"),
    )
    p(
        "--header-timeout",
        dest="header_timeout_s",
        type=float,
        help=setting("header_timeout_s", "seconds for a request head"),
    )
    p(
        "--body-timeout",
        dest="body_timeout_s",
        type=float,
        help=setting("body_timeout_s", "seconds for a request body"),
    )
    p("--limit-concurrency", type=int, help=setting("limit_concurrency", "open connections at most"))
    p("--no-warmup", dest="warmup", action="store_false", default=None, help="skip the warm-up generation at start-up")
    p("--no-access-log", dest="access_log", action="store_false", default=None, help="no line per request in the log")
    p("--log-level", choices=("critical", "error", "warning", "info", "debug"), help=setting("log_level", "log level"))
    add_verbosity(parser)  # -v: --log-level debug, -q: --log-level warning
    return parser


def settings_from_args(args: argparse.Namespace) -> Any:
    """`ServeSettings` from the flags given (None = not given, so the environment or the default applies)."""
    from refine_control.serve.settings import ServeSettings

    overrides = {k: v for k, v in vars(args).items() if v is not None and k not in ("token_file", "verbose", "quiet")}
    if args.log_level is None and (args.verbose or args.quiet):
        overrides["log_level"] = "debug" if args.verbose else "warning"
    beside = overrides.get("web_dir") == Path(BESIDE_MODEL)  # `--web` without DIR (argparse applies `type` to const)
    if beside:
        del overrides["web_dir"]
    if args.token_file is not None:
        try:
            overrides["token"] = args.token_file.read_text("utf-8").splitlines()[0].strip()
        except (OSError, IndexError, UnicodeDecodeError) as err:
            raise ConfigError(
                f"cannot read a token from --token-file {args.token_file} ({type(err).__name__})"
            ) from None
    try:
        settings = ServeSettings(**overrides)
        if beside and settings.model_dir is not None:
            settings = ServeSettings(**overrides, web_dir=beside_model(settings.model_dir))
        return settings
    except ValidationError as err:
        first = err.errors(include_url=False, include_input=False)[0]
        name = ".".join(str(p) for p in first["loc"]) or "settings"
        raise ConfigError(f"`{name}`: {first['msg']}") from None


def check_exposure(settings: Any) -> None:
    """Refuse a non-loopback bind without a token; warn once when one is used."""
    from refine_control.serve.settings import is_loopback

    if is_loopback(settings.host):
        return
    if not settings.token_value:
        raise ConfigError(
            f"refusing to listen on {settings.host} without a token: anyone on the network could use the server",
            hint="set REFINE_SERVE_TOKEN (or --token-file), e.g. to the output of "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`, or bind 127.0.0.1",
        )
    if len(settings.token_value) < 16:
        raise ConfigError("the token must be at least 16 characters long")
    logger.warning("listening on %s: reachable from other machines; /v1 requires the bearer token", settings.host)
    if settings.host in ("0.0.0.0", "::") and not settings.allowed_hosts:
        logger.warning("only loopback Host names are accepted; add --allowed-host NAME for the names clients use")


def serve(settings: Any, engine: Any, device: Any = None) -> int:
    import uvicorn

    from refine_control.serve.app import create_app
    from refine_control.serve.connections import guarded_protocol

    app = create_app(settings, engine, device)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            jobs = getattr(app.state, "jobs", None)
            if jobs is not None:  # refuse queued work at once; running jobs may finish (graceful shutdown)
                threading.Thread(target=jobs.begin_shutdown, daemon=True).start()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,  # our logging setup; uvicorn's loggers propagate to it
        access_log=settings.access_log,
        server_header=False,
        proxy_headers=False,  # never trust X-Forwarded-* from the network
        # Head/body deadlines and our own connection cap (uvicorn's answers plain-text 503 to every route).
        http=guarded_protocol(settings),
        limit_concurrency=None,
        timeout_graceful_shutdown=int(settings.graceful_shutdown_s),
        timeout_keep_alive=5,
        lifespan="on",
    )
    # uvicorn re-raises the signal it stopped on; with these handlers that ends here with exit code 0.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda s, f: None)
    try:
        Server(config).run()
    except SystemExit as err:  # uvicorn exits 1 when it cannot bind, 3 when startup failed
        return int(err.code or 0)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    loaded: list[tuple[Any, Any]] = []

    def load() -> int:
        """Everything before the port is bound; a mistake here is `error:` / `hint:` and exit 2 (run_cli)."""
        settings = settings_from_args(args)
        logging.getLogger().setLevel(settings.log_level.upper())
        check_exposure(settings)
        from refine_control.serve.engine import load_engine

        try:
            engine = load_engine(settings)
        except (RefineError, OSError):
            raise
        except Exception as err:  # ONNX Runtime failing on the warm-up run: say so in one line
            raise ConfigError(
                f"the model in {settings.model_dir} failed its warm-up run ({type(err).__name__})",
                hint="is the model dir complete? export it again with refine-export",
            ) from None
        loaded.append((settings, engine, prepare_device(settings.model_dir, settings.web_dir, settings.threads)))
        return 0

    code = run_cli(load)
    if code != 0:
        return code
    settings, engine, device = loaded[0]
    on_device = f", on-device page at {DEVICE_URL}" if device.available else ""
    logger.info(
        "serving on http://%s:%d (web page at /%s, API reference at /docs)",
        _url_host(settings.host),
        settings.port,
        on_device,
    )
    return serve(settings, engine, device)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


if __name__ == "__main__":
    sys.exit(main())
