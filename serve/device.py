"""The on-device mode: `refine-serve MODEL --web [DIR]` serves the model's browser folder at `/device/`, where the
model runs in the browser (ONNX Runtime Web) and no prompt, control image or result reaches this server.

DIR is the folder `refine-export --web` writes (default: beside MODEL, named MODEL + `-web`, as there):
- a browser folder of this model (its `model/manifest.json` is MODEL's, byte for byte) is served as it is;
- a missing or empty DIR is written from MODEL at start, before the port is bound (export/web.py, atomically;
  nothing outside DIR and its parent's temp/lock entries). That needs the browser runtime's npm packages
  (web/node_modules of a checkout, `npm ci --prefix web`): without them, e.g. on the device install, the mode is
  off with a warning in the log and a note on the page, and the server runs as usual;
- anything else (a file, a non-empty folder that is not a browser folder, the browser folder of another model)
  is refused with exit code 2: nothing is replaced.
The folder's files get the page's own Content-Security-Policy (WASM compilation, its import map, workers) instead
of the server page's, and the cross-origin isolation headers every response carries (security.py).
"""

import logging
import re
from dataclasses import dataclass
from os import PathLike, stat_result
from pathlib import Path

from starlette.responses import JSONResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from refine_control.errors import ConfigError

logger = logging.getLogger(__name__)

URL = "/device/"
BESIDE_MODEL = "<beside MODEL>"  # `--web` without DIR
NOT_ENABLED = "off: start refine-serve with --web to run the model in this browser"
NO_RUNTIME = (
    "unavailable: this install has no browser runtime (ONNX Runtime Web); run `npm ci --prefix web` in a checkout "
    "of refine-control, or pass --web DIR with a folder written by `refine-export --web`"
)
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".wasm": "application/wasm",  # ONNX Runtime Web compiles it while it streams in
    ".css": "text/css",
    ".json": "application/json",
    ".png": "image/png",
    ".txt": "text/plain; charset=utf-8",
}
_META_CSP = re.compile(r'<meta\s+http-equiv="Content-Security-Policy"\s+content="([^"]+)"', re.IGNORECASE)


@dataclass(frozen=True)
class DeviceFolder:
    """The browser folder to serve (`path`), or why there is none (`note`, shown on the page: no file paths)."""

    path: Path | None
    note: str
    csp: str = ""

    @property
    def available(self) -> bool:
        return self.path is not None


def beside_model(model_dir: Path) -> Path:
    """`--web` without DIR: the folder `refine-export --web` writes by default."""
    return model_dir.with_name(model_dir.name + "-web")


def is_web_folder(path: Path) -> bool:
    return (
        (path / "index.html").is_file() and (path / "sw.js").is_file() and (path / "model" / "manifest.json").is_file()
    )


def page_csp(folder: Path) -> str:
    """The policy the page declares in its own `<meta>` (it names the import map's hash), sent as the header of
    every file of the folder, workers included; `frame-ancestors` only works as a header."""
    found = _META_CSP.search((folder / "index.html").read_text("utf-8", errors="replace"))
    if found is None:
        raise ConfigError(
            f"--web {folder}: its index.html declares no Content-Security-Policy, so it is not a browser folder of "
            "this version",
            hint="write it again with refine-export --web (or delete it and let refine-serve write it)",
        )
    return found.group(1).strip().rstrip(";") + "; frame-ancestors 'none'"


def _serve(folder: Path) -> DeviceFolder:
    logger.info("on-device mode: serving the browser folder %s at %s", folder, URL)
    return DeviceFolder(folder, "", page_csp(folder))


def prepare_device(model_dir: Path | None, web_dir: Path | None, threads: int | None = None) -> DeviceFolder:
    """The browser folder for `model_dir` at `web_dir` (see the module docstring); `ConfigError` (exit 2) for a
    `web_dir` that cannot be used without replacing something."""
    if web_dir is None or model_dir is None:
        return DeviceFolder(None, NOT_ENABLED)
    if web_dir.exists() and not web_dir.is_dir():
        raise ConfigError(f"--web {web_dir} exists and is not a directory")
    if web_dir.is_dir() and any(web_dir.iterdir()):
        if not is_web_folder(web_dir):
            raise ConfigError(
                f"--web {web_dir} is not empty and is not a browser folder; refusing to write into it",
                hint="name a new or empty folder, or one written by refine-export --web",
            )
        if (web_dir / "model" / "manifest.json").read_bytes() != (model_dir / "manifest.json").read_bytes():
            raise ConfigError(
                f"--web {web_dir} holds the browser folder of another model (its model/manifest.json differs)",
                hint="delete it to have it written again from MODEL, or name another folder",
            )
        return _serve(web_dir)

    from refine_control.export.web import check_web_source, write_web_folder

    try:
        check_web_source()
    except ConfigError as err:
        logger.warning("on-device mode off: %s (%s)", err, err.hint or "")
        return DeviceFolder(None, NO_RUNTIME)
    logger.info("on-device mode: writing the browser folder %s (once)", web_dir)
    try:
        write_web_folder(model_dir, web_dir, threads=threads)
    except ConfigError as err:  # the model cannot go into a browser folder (e.g. external weights)
        logger.warning("on-device mode off: %s", err)
        return DeviceFolder(None, f"unavailable: {err}")
    return _serve(web_dir)


class DeviceFiles(StaticFiles):
    """The browser folder as static files: `/device/` is its index.html, no directory listings, no symlinks out,
    the MIME types module scripts and streaming WASM compilation need, and the page's own CSP."""

    def __init__(self, folder: DeviceFolder) -> None:
        assert folder.path is not None
        super().__init__(directory=folder.path, html=True)
        self.csp = folder.csp

    def file_response(
        self, full_path: PathLike[str] | str, stat_result: stat_result, scope: Scope, status_code: int = 200
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers["content-type"] = MEDIA_TYPES.get(Path(full_path).suffix.lower(), "application/octet-stream")
        response.headers["content-security-policy"] = self.csp
        response.headers["cache-control"] = "no-cache"  # revalidated (ETag), so a rewritten folder is seen at once
        return response


class DeviceOff:
    """`/device/...` while the mode is off: 404 with the reason, in the API's error shape."""

    def __init__(self, folder: DeviceFolder) -> None:
        self.body = {"error": "not_found", "detail": f"the on-device mode is {folder.note}"}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await JSONResponse(self.body, status_code=404)(scope, receive, send)
