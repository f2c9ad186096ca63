"""A static file server for the web folder on 127.0.0.1, with the cross-origin isolation headers that WASM threads
need (COOP/COEP), the MIME types ONNX Runtime Web needs (.mjs, .wasm), and a log of every request it served."""

import functools
import http.server
import threading
import time
from pathlib import Path
from typing import ClassVar

HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-cache",
}


class IsolatedHandler(http.server.SimpleHTTPRequestHandler):
    extensions_map: ClassVar[dict[str, str]] = {
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".mjs": "text/javascript",
        ".js": "text/javascript",
        ".wasm": "application/wasm",
        ".json": "application/json",
    }

    def end_headers(self) -> None:
        for key, value in HEADERS.items():
            self.send_header(key, value)
        super().end_headers()

    def log_message(self, format: str, *args) -> None:
        self.server.requests.append((time.time(), self.path))


class StaticServer:
    def __init__(self, root: Path) -> None:
        handler = functools.partial(IsolatedHandler, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.requests = []
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def requests(self) -> list[tuple[float, str]]:
        """(epoch seconds, path) of every request served."""
        return self.httpd.requests

    def __enter__(self) -> "StaticServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
