"""The bounded queue: 503 + Retry-After when full, cancellation, progress events, time limits, shutdown.

Queue mechanics do not depend on the model, so these use the stand-in engine with a gate that holds a job
"running" for as long as a test needs; the real model goes through the same queue in the process tests.
"""

import asyncio
import json
import threading
import time

import pytest
from serve_client import make_client
from serve_fakes import FakeEngine
from serve_helpers import b64, png_bytes

from refine_control.serve.engine import GenerationParams
from refine_control.serve.jobs import Job, JobManager, JobSpec, job_events, wait_until_done
from refine_control.serve.settings import ServeSettings


def body(**overrides):
    out = {"prompt": "p", "control_image": b64(png_bytes()), "steps": 3, "seed": 0}
    out.update(overrides)
    return out


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError("condition not reached")


@pytest.fixture
def gated():
    """Workers 1, queue 2; the engine holds its first job until `engine.gate` is set."""
    engine = FakeEngine()
    engine.gate = threading.Event()
    with make_client(engine, workers=1, queue_size=2) as client:
        yield client, engine
        engine.gate.set()


def test_full_queue_is_503_with_retry_after_and_health_stays_fast(gated):
    client, engine = gated
    ids = [client.post("/v1/jobs", json=body()).json()["id"] for _ in range(3)]  # 1 running + 2 queued
    wait_for(engine.started.is_set)
    for path in ("/v1/jobs", "/v1/generate"):
        r = client.post(path, json=body())
        assert r.status_code == 503 and r.json()["error"] == "queue_full"
        assert int(r.headers["retry-after"]) >= 1
    # a refused request's body is read (the middleware reads every body first) but never parsed: garbage → 503
    r = client.post("/v1/generate", content=b"{garbage", headers={"Content-Type": "application/json"})
    assert r.status_code == 503
    start = time.monotonic()
    assert client.get("/healthz").status_code == 200
    assert time.monotonic() - start < 1.0
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["status"] == "busy"
    statuses = [client.get(f"/v1/jobs/{i}").json() for i in ids]
    assert [s["status"] for s in statuses] == ["running", "queued", "queued"]
    assert [s["position"] for s in statuses] == [None, 0, 1]
    engine.gate.set()
    wait_for(lambda: all(client.get(f"/v1/jobs/{i}").json()["status"] == "done" for i in ids))
    assert client.get("/readyz").status_code == 200
    for job_id in ids:
        r = client.get(f"/v1/jobs/{job_id}/result")
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"


def test_cancel_queued_job_frees_its_slot(gated):
    client, engine = gated
    client.post("/v1/jobs", json=body())
    wait_for(engine.started.is_set)
    queued = [client.post("/v1/jobs", json=body()).json()["id"] for _ in range(2)]
    assert client.post("/v1/jobs", json=body()).status_code == 503
    r = client.delete(f"/v1/jobs/{queued[0]}")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert client.post("/v1/jobs", json=body()).status_code == 202
    r = client.get(f"/v1/jobs/{queued[0]}/result")
    assert r.status_code == 409 and r.json()["error"] == "cancelled"


def test_cancel_running_job(gated):
    client, engine = gated
    job_id = client.post("/v1/jobs", json=body(steps=20)).json()["id"]
    wait_for(engine.started.is_set)
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 200
    engine.gate.set()
    wait_for(lambda: client.get(f"/v1/jobs/{job_id}").json()["status"] == "cancelled")
    assert client.get(f"/v1/jobs/{job_id}").json()["progress"]["step"] == 0
    assert client.get(f"/v1/jobs/{job_id}/result").status_code == 409


def test_unknown_and_malformed_job_ids(fake_client):
    assert fake_client.get("/v1/jobs/" + "a" * 22).status_code == 404
    r = fake_client.get("/v1/jobs/<script>")
    assert r.status_code in (404, 422) and "<script>" not in r.text


def test_progress_events_per_step():
    engine = FakeEngine(step_s=0.03)
    with make_client(engine) as client:
        job_id = client.post("/v1/jobs", json=body(steps=6)).json()["id"]
        with client.stream("GET", f"/v1/jobs/{job_id}/events") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            text = stream.read().decode()
    events = [block for block in text.split("\n\n") if block.startswith("event:")]
    names = [block.split("\n")[0].split(": ")[1] for block in events]
    data = [json.loads(block.split("data: ", 1)[1]) for block in events]
    assert names[-1] == "done" and data[-1]["progress"] == {"step": 6, "total": 6}
    steps = [d["progress"]["step"] for d in data if d["status"] == "running"]
    assert steps == sorted(steps) and len(set(steps)) >= 3  # one event per step (a fast step may merge)


def test_request_timeout_is_504():
    with make_client(FakeEngine(step_s=0.1), request_timeout_s=0.25) as client:
        r = client.post("/v1/generate", json=body(steps=20))
        assert r.status_code == 504 and r.json()["error"] == "timeout"
        assert client.post("/v1/generate", json=body(steps=1)).status_code == 200  # slot freed


def test_queue_wait_cap_is_503():
    engine = FakeEngine()
    engine.gate = threading.Event()
    with make_client(engine, max_queue_wait_s=0.3) as client:
        client.post("/v1/jobs", json=body())
        wait_for(engine.started.is_set)
        queued = client.post("/v1/jobs", json=body()).json()["id"]
        time.sleep(0.45)
        status = client.get(f"/v1/jobs/{queued}").json()
        assert status["status"] == "failed" and status["error"] == "queue_timeout"
        assert client.get(f"/v1/jobs/{queued}/result").status_code == 503
        engine.gate.set()


def test_finished_jobs_are_bounded():
    with make_client(FakeEngine(), max_finished_jobs=2) as client:
        ids = []
        for _ in range(3):
            ids.append(client.post("/v1/jobs", json=body(steps=1)).json()["id"])
            wait_for(lambda i=ids[-1]: client.get(f"/v1/jobs/{i}").json()["status"] == "done")
        assert client.get(f"/v1/jobs/{ids[0]}").status_code == 404
        assert client.get(f"/v1/jobs/{ids[2]}/result").status_code == 200
        assert client.delete(f"/v1/jobs/{ids[2]}").status_code == 200  # picked up: forget it
        assert client.get(f"/v1/jobs/{ids[2]}").status_code == 404


def test_shutdown_refuses_queued_work_and_lets_running_finish(gated):
    client, engine = gated
    running = client.post("/v1/jobs", json=body()).json()["id"]
    wait_for(engine.started.is_set)
    queued = client.post("/v1/jobs", json=body()).json()["id"]
    jobs = client.app.state.jobs
    jobs.begin_shutdown()
    status = client.get(f"/v1/jobs/{queued}").json()
    assert status["status"] == "failed" and status["error"] == "shutting_down"
    r = client.post("/v1/generate", json=body())
    assert r.status_code == 503 and r.json()["error"] == "shutting_down" and "retry-after" in r.headers
    assert client.get("/readyz").json()["status"] == "shutting_down"
    engine.gate.set()
    wait_for(lambda: client.get(f"/v1/jobs/{running}").json()["status"] == "done")


def test_disconnected_client_cancels_its_job():
    engine = FakeEngine()
    engine.gate = threading.Event()
    manager = JobManager(engine, ServeSettings(queue_size=2))
    try:
        params = GenerationParams("p", "", 3, 1.0, 1.0, 0, 64, 64)
        running = manager.reserve().submit(JobSpec(params, png_bytes_array()))
        wait_for(engine.started.is_set)
        queued = manager.reserve().submit(JobSpec(params, png_bytes_array()))

        async def gone():
            return True

        asyncio.run(wait_until_done(queued, manager, gone, poll_s=0.05))
        assert queued.state == "cancelled" and engine.calls == 1  # never started
        assert manager.stats()["queued"] == 0
        engine.gate.set()
        wait_for(lambda: running.terminal)
    finally:
        engine.gate.set()
        manager.close(1.0)


def png_bytes_array():
    import numpy as np

    return np.zeros((64, 64, 3), np.uint8)


def test_event_stream_ends_with_the_final_state_even_when_the_job_finishes_mid_send():
    """The stream stops on the state it sent: a job that finishes while a `running` event is being sent still gets
    its `done` event (the page otherwise reads the stream's end as "Failed: no result")."""
    params = GenerationParams("p", "", 3, 1.0, 1.0, 0, 64, 64)
    job = Job(JobSpec(params, png_bytes_array()), keep=True)
    job.state, job.step = "running", 1
    manager = JobManager(FakeEngine(), ServeSettings(queue_size=2))

    async def follow() -> list[str]:
        stream = job_events(job, manager)
        first = await stream.__anext__()  # `running`, handed to the sender
        job.state, job.step = "done", 3  # the worker finishes while it is being sent
        rest = [chunk async for chunk in stream]
        return [first, *rest]

    try:
        events = asyncio.run(follow())
    finally:
        manager.close(1.0)
    assert events[0].startswith("event: running") and events[-1].startswith("event: done")
