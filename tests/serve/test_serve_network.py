"""Network exposure: Host allow-list (DNS rebinding), cross-site requests, no CORS, bearer token, binds, routes."""

import asyncio
import re
import time

import pytest
from serve_client import make_client
from serve_fakes import FakeEngine
from serve_helpers import b64, png_bytes

from refine_control.errors import ConfigError
from refine_control.serve.cli import check_exposure, main, settings_from_args
from refine_control.serve.security import GuardMiddleware, split_host
from refine_control.serve.settings import ServeSettings, is_loopback

TOKEN = "t0ken-" + "x" * 26


def gen_body():
    return {"prompt": "p", "control_image": b64(png_bytes()), "steps": 1, "seed": 0}


# ------------------------------------------------------------------------------------------------ Host
@pytest.mark.parametrize(
    "host",
    [
        "evil.example",
        "evil.example:8000",
        "127.0.0.1.evil.example",
        "localhost.evil.example",
        "",
        ":8000",
        "127.0.0.1:abc",
        "[::1",
        "user@127.0.0.1",
        "localhost.",
    ],
)
def test_foreign_host_rejected(fake_client, host):
    for path in ("/healthz", "/", "/v1/models"):
        r = fake_client.get(path, headers={"Host": host})
        assert r.status_code == 400 and r.json()["error"] == "host_not_allowed", (host, path)
        assert "evil" not in r.text


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost:8000", "[::1]:8000", "LOCALHOST:8000", "127.0.0.1"])
def test_loopback_hosts_accepted(fake_client, host):
    assert fake_client.get("/healthz", headers={"Host": host}).status_code == 200


def test_extra_allowed_host_and_wildcard():
    with make_client(FakeEngine(), allowed_hosts=["my-box.lan"]) as client:
        assert client.get("/healthz", headers={"Host": "my-box.lan:8000"}).status_code == 200
        assert client.get("/healthz", headers={"Host": "other.lan"}).status_code == 400
    assert ServeSettings(allowed_hosts="a.lan, b.lan").allowed_hosts == ["a.lan", "b.lan"]
    assert ServeSettings(allowed_hosts=["*"]).host_allow_list() is None


def test_split_host():
    assert split_host("[::1]:8000") == "::1"
    assert split_host("LocalHost:1") == "localhost"
    assert split_host("[::1]x") is None
    assert split_host("a b") is None


def run_guard(scope_headers, path="/healthz", method="GET", raw_path=None, settings=None, server=None):
    """Call the guard directly with a hand-made scope (missing/duplicate Host, absolute-form targets)."""
    called = []

    async def app(scope, receive, send):
        called.append(True)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    guard = GuardMiddleware(app, settings or ServeSettings())
    sent = []
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": raw_path if raw_path is not None else path.encode(),
        "headers": scope_headers,
        "server": server or ("127.0.0.1", 8000),
    }

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(guard(scope, receive, send))
    return sent[0]["status"], called


def test_non_loopback_listener_needs_a_token():
    lan = [(b"host", b"192.168.1.5:8000")]
    settings = ServeSettings(allowed_hosts=["192.168.1.5"])
    assert run_guard(lan, server=("192.168.1.5", 8000), settings=settings) == (403, [])
    assert run_guard(lan, server=("127.0.0.1", 8000), settings=settings) == (200, [True])
    with_token = ServeSettings(allowed_hosts=["192.168.1.5"], token=TOKEN)
    assert run_guard(lan, server=("192.168.1.5", 8000), settings=with_token) == (200, [True])  # /healthz: open


def test_missing_duplicate_host_and_absolute_target():
    assert run_guard([]) == (400, [])
    assert run_guard([(b"host", b"127.0.0.1"), (b"host", b"evil.example")]) == (400, [])
    assert run_guard([(b"host", b"127.0.0.1")], raw_path=b"http://evil.example/") == (400, [])
    assert run_guard([(b"host", b"127.0.0.1:8000")]) == (200, [True])


# ------------------------------------------------------------------------------------------------ cross-site
@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Origin": "http://127.0.0.1:9999"},  # another local app is another origin
        {"Origin": "http://evil.example", "Sec-Fetch-Site": "same-origin"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
    ],
)
def test_cross_site_requests_refused(fake_client, fake_engine, headers):
    r = fake_client.post("/v1/generate", json=gen_body(), headers=headers)
    assert r.status_code == 403 and r.json()["error"] == "cross_origin"
    assert fake_client.get("/v1/models", headers=headers).status_code == 403
    assert fake_engine.calls == 0


def test_cross_site_text_plain_simple_post_refused(fake_client):
    r = fake_client.post(
        "/v1/generate", content=b"{}", headers={"Content-Type": "text/plain", "Sec-Fetch-Site": "cross-site"}
    )
    assert r.status_code == 403


def test_same_origin_and_plain_clients_allowed(fake_client):
    r = fake_client.post(
        "/v1/generate", json=gen_body(), headers={"Origin": "http://127.0.0.1:8000", "Sec-Fetch-Site": "same-origin"}
    )
    assert r.status_code == 200
    assert fake_client.post("/v1/generate", json=gen_body()).status_code == 200  # curl: no Origin, no Fetch-Metadata
    assert fake_client.get("/", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 200  # following a link


def test_no_cors(fake_client):
    r = fake_client.get("/v1/models", headers={"Origin": "http://127.0.0.1:8000"})
    assert r.status_code == 200
    assert not [h for h in r.headers if h.lower().startswith("access-control-")]
    preflight = fake_client.options(
        "/v1/generate",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code in (403, 405)
    assert not [h for h in preflight.headers if h.lower().startswith("access-control-")]


def test_response_hygiene(fake_client):
    r = fake_client.post("/v1/generate", json=gen_body())
    assert r.headers["content-type"] == "image/png"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["cache-control"] == "no-store"
    assert "server" not in r.headers
    page = fake_client.get("/")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert page.headers["x-frame-options"] == "DENY"


# ------------------------------------------------------------------------------------------------ token
@pytest.fixture
def token_client():
    with make_client(FakeEngine(), token=TOKEN) as client:
        yield client


@pytest.mark.parametrize(
    "auth",
    [None, "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", "Bearer", f"{TOKEN}"],
)
def test_token_required_on_api(token_client, auth):
    headers = {"Authorization": auth} if auth else {}
    for method, path in (("GET", "/v1/models"), ("POST", "/v1/generate"), ("GET", "/v1/jobs/abcdefghijklmnopqrstuv")):
        r = token_client.request(method, path, headers=headers, json=gen_body() if method == "POST" else None)
        assert r.status_code == 401, (auth, path)
        assert r.headers["www-authenticate"] == "Bearer"
        assert TOKEN not in r.text


def test_token_in_query_string_is_not_accepted(token_client):
    assert token_client.get(f"/v1/models?token={TOKEN}").status_code == 401
    assert token_client.get(f"/v1/models?access_token={TOKEN}").status_code == 401


def test_right_token_works_and_public_pages_stay_open(token_client):
    ok = {"Authorization": f"Bearer {TOKEN}"}
    assert token_client.get("/v1/models", headers=ok).status_code == 200
    assert token_client.get("/v1/models", headers={"Authorization": f"bearer {TOKEN}"}).status_code == 200  # RFC 7235
    assert token_client.post("/v1/generate", json=gen_body(), headers=ok).status_code == 200
    for path in ("/healthz", "/", "/docs", "/openapi.json", "/static/app.js"):
        assert token_client.get(path).status_code == 200, path


def test_settings_never_show_the_token():
    settings = ServeSettings(token=TOKEN)
    assert TOKEN not in repr(settings) and TOKEN not in str(settings.model_dump())


# ------------------------------------------------------------------------------------------------ binding
def test_loopback_detection():
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.2", "example.com"))


def test_non_loopback_bind_needs_a_token(tmp_path, caplog):
    args = ["--host", "0.0.0.0"]
    from refine_control.serve.cli import build_parser

    with pytest.raises(ConfigError, match="without a token"):
        check_exposure(settings_from_args(build_parser().parse_args([str(tmp_path), *args])))
    with pytest.raises(ConfigError, match="at least 16"):
        check_exposure(settings_from_args(build_parser().parse_args([str(tmp_path), *args, "--token", "short"])))
    check_exposure(settings_from_args(build_parser().parse_args([str(tmp_path), *args, "--token", TOKEN])))
    assert "reachable from other machines" in caplog.text and TOKEN not in caplog.text
    assert main([str(tmp_path), *args]) == 2  # refuses before loading anything


def test_token_file_and_environment(tmp_path, monkeypatch):
    from refine_control.serve.cli import build_parser

    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    settings = settings_from_args(build_parser().parse_args([str(tmp_path), "--token-file", str(token_file)]))
    assert settings.token_value == TOKEN
    monkeypatch.setenv("REFINE_SERVE_TOKEN", "from-env-" + "y" * 20)
    monkeypatch.setenv("REFINE_SERVE_QUEUE_SIZE", "7")
    settings = settings_from_args(build_parser().parse_args([str(tmp_path), "--queue-size", "2"]))
    assert settings.token_value.startswith("from-env-") and settings.queue_size == 2  # flags win over env
    monkeypatch.setenv("REFINE_SERVE_PORT", "not-a-port")
    assert main([str(tmp_path)]) == 2


def test_missing_model_dir_fails_fast_with_one_line(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "does not exist" in err.splitlines()[0] and "Traceback" not in err
    assert main([str(tmp_path)]) == 2  # a dir without manifest.json
    assert "manifest.json" in capsys.readouterr().err.splitlines()[0]


# ------------------------------------------------------------------------------------------------ routes
def test_route_table_snapshot(fake_client):
    """N7: no route takes a path, URL, model name or plugin; additions must update this list (and get reviewed)."""

    def flatten(routes):
        for route in routes:
            if hasattr(route, "effective_route_contexts"):  # FastAPI ≥ 0.16x keeps included routers nested
                yield from flatten(route.effective_route_contexts())
            else:
                for method in sorted(getattr(route, "methods", None) or ["MOUNT"]):
                    if method != "HEAD":
                        yield method, route.path

    routes = sorted(flatten(fake_client.app.routes))
    assert routes == [
        ("DELETE", "/v1/jobs/{job_id}"),
        ("GET", "/"),
        ("GET", "/docs"),
        ("GET", "/healthz"),
        ("GET", "/openapi.json"),
        ("GET", "/readyz"),
        ("GET", "/v1/jobs/{job_id}"),
        ("GET", "/v1/jobs/{job_id}/events"),
        ("GET", "/v1/jobs/{job_id}/result"),
        ("GET", "/v1/models"),
        ("MOUNT", "/device"),  # the on-device mode's static folder (a 404 with the reason while it is off)
        ("MOUNT", "/static"),
        ("POST", "/v1/generate"),
        ("POST", "/v1/jobs"),
        ("POST", "/v1/preprocess"),
    ]


def test_head_works_where_get_does(fake_client):
    """HEAD answers every GET route with GET's status and headers and no body (FastAPI alone answers 405)."""
    job_id = fake_client.post("/v1/jobs", json={"prompt": "p", "control_image": b64(png_bytes()), "steps": 1}).json()
    for _ in range(500):  # done, so GET and HEAD of /result see the same state
        if fake_client.get(f"/v1/jobs/{job_id['id']}").json()["status"] == "done":
            break
        time.sleep(0.01)
    paths = ["/healthz", "/readyz", "/v1/models", "/", "/docs", "/openapi.json", "/static/app.js"]
    paths += [f"/v1/jobs/{job_id['id']}", f"/v1/jobs/{job_id['id']}/result", "/v1/jobs/" + "a" * 22, "/nope"]
    for path in paths:
        get, head = fake_client.get(path), fake_client.head(path)
        assert head.status_code == get.status_code and head.content == b"", path
        for name in ("content-type", "content-length", "cache-control", "x-content-type-options"):
            assert head.headers.get(name) == get.headers.get(name), (path, name)
    assert fake_client.head("/v1/generate").status_code == 405  # POST-only routes stay POST-only


def test_static_files_cannot_escape(fake_client):
    for path in ("/static/../app.py", "/static/%2e%2e/app.py", "/static/..%2fsettings.py"):
        assert fake_client.get(path).status_code == 404


def test_openapi_and_docs_offline(fake_client):
    spec = fake_client.get("/openapi.json").json()
    body = spec["paths"]["/v1/generate"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    steps = body["properties"]["steps"]["anyOf"]  # an integer, or null for the model's recommendation
    assert {"type": "integer", "minimum": 1, "maximum": 50} in steps and {"type": "null"} in steps
    for page in ("/docs", "/"):
        html = fake_client.get(page).text
        refs = re.findall(r'(?:src|href)="([^"]*)"', html)
        assert refs and all((ref.startswith("/") and not ref.startswith("//")) or ref == "data:," for ref in refs)
    for asset in ("/static/app.js", "/static/docs.js", "/static/style.css"):
        assert not re.search(r"https?://|//cdn|@import|url\(", fake_client.get(asset).text), asset
