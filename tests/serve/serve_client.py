"""In-process app clients for the server tests (a plain module, importable from any test file)."""

from fastapi.testclient import TestClient

from refine_control.serve.app import create_app
from refine_control.serve.settings import ServeSettings

BASE_URL = "http://127.0.0.1:8000"


def make_client(engine=None, **settings) -> TestClient:
    app = create_app(ServeSettings(**{"warmup": False, **settings}), engine)
    return TestClient(app, base_url=BASE_URL, raise_server_exceptions=False)
