"""The bounded work queue: admission, worker threads, per-step progress, cancellation, time limits, shutdown.

At most `workers + queue_size` generations are admitted at once (`JobManager.reserve`), counted from after the
body has arrived (so a slow client never holds a slot) and before it is parsed, so an overloaded server neither
parses nor decodes what it cannot run: the rest get 503 + Retry-After at once. Workers are plain threads (ONNX Runtime releases the GIL); the event loop only waits on
jobs, woken through `loop.call_soon_threadsafe`, so `/healthz` stays fast while generating.

A job waiting longer than `max_queue_wait_s` fails with 503; one running longer than `request_timeout_s` is
cancelled between steps (504). Finished jobs are kept for pickup at most `result_ttl_s`, and at most
`max_finished_jobs` of them (oldest dropped), so memory stays bounded. Nothing here logs a prompt or an image.
"""

import asyncio
import contextlib
import logging
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from refine_control.errors import ConfigError
from refine_control.runtime.pipeline import CancelledError
from refine_control.serve.engine import Engine, GenerationParams
from refine_control.serve.images import encode_png
from refine_control.serve.schemas import ApiError, JobProgress, JobStatus
from refine_control.serve.settings import ServeSettings

logger = logging.getLogger(__name__)

TERMINAL = ("done", "failed", "cancelled")
_CANCEL_ERRORS = {
    "client": ApiError(409, "cancelled", "the job was cancelled"),
    "timeout": ApiError(504, "timeout", "the generation ran past the time limit"),
    "shutdown": ApiError(503, "shutting_down", "the server is shutting down", {"Retry-After": "5"}),
    "queue_timeout": ApiError(503, "queue_timeout", "the job waited too long in the queue", {"Retry-After": "5"}),
}


@dataclass
class JobSpec:
    """What a worker needs: validated parameters and the control input, already at the output size."""

    params: GenerationParams
    control: np.ndarray  # (H, W, 3) uint8: a control map, or an image for `preprocessor`
    preprocessor: str | None = None


class Job:
    """One generation. Its `is_set()` makes it the engine's cancel token (cancelled, or past its deadline)."""

    def __init__(self, spec: JobSpec, keep: bool) -> None:
        self.id = secrets.token_urlsafe(16)
        self.spec: JobSpec | None = spec
        self.params = spec.params
        self.keep = keep  # kept for pickup after it finishes (the jobs API) or dropped by its waiter
        self.state = "queued"
        self.step, self.total = 0, spec.params.steps
        self.error: ApiError | None = None
        self.png: bytes | None = None
        self.cancel_reason: str | None = None
        self.created = time.monotonic()
        self.started: float | None = None
        self.finished: float | None = None
        self.deadline: float | None = None
        self._watchers: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self._watch_lock = threading.Lock()

    # -- cancel token -------------------------------------------------------------------------------------
    def is_set(self) -> bool:
        if self.cancel_reason is not None:
            return True
        if self.deadline is not None and time.monotonic() > self.deadline:
            self.cancel_reason = "timeout"
            return True
        return False

    # -- change notification (worker thread → event loop) -------------------------------------------------
    def subscribe(self) -> asyncio.Event:
        event = asyncio.Event()
        with self._watch_lock:
            self._watchers.append((asyncio.get_running_loop(), event))
        return event

    def unsubscribe(self, event: asyncio.Event) -> None:
        with self._watch_lock:
            self._watchers = [(loop, e) for loop, e in self._watchers if e is not event]

    def notify(self) -> None:
        with self._watch_lock:
            watchers = list(self._watchers)
        for loop, event in watchers:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
                loop.call_soon_threadsafe(event.set)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    def status(self, position: int | None = None) -> JobStatus:
        return JobStatus(
            id=self.id,
            status=self.state,  # type: ignore[arg-type]
            position=position,
            progress=JobProgress(step=self.step, total=self.total),
            seed=self.params.seed,
            width=self.params.width,
            height=self.params.height,
            error=self.error.code if self.error else None,
            detail=self.error.detail if self.error else None,
        )


class Ticket:
    """An admitted slot, held from before the body is read until its job finishes (or the request fails)."""

    def __init__(self, manager: "JobManager") -> None:
        self._manager = manager
        self.used = False

    def submit(self, spec: JobSpec, keep: bool = False) -> Job:
        if self.used:
            raise RuntimeError("a ticket admits one job")
        self.used = True
        return self._manager._submit(spec, keep)

    def release(self) -> None:
        if not self.used:
            self.used = True
            self._manager._release_reservation()


class JobManager:
    """Owns the queue and the worker threads; see the module docstring."""

    def __init__(self, engine: Engine, settings: ServeSettings) -> None:
        self.engine = engine
        self.settings = settings
        self.capacity = settings.admission_capacity
        self._cond = threading.Condition()
        self._queue: deque[Job] = deque()
        self._running: set[Job] = set()
        self._jobs: dict[str, Job] = {}
        self._reserved = 0
        self._closing = False
        self._mean_s = 1.0  # running mean of generation time, for Retry-After
        self.completed = 0
        self._threads = [
            threading.Thread(target=self._work, name=f"refine-serve-worker-{i}", daemon=True)
            for i in range(settings.workers)
        ]
        for thread in self._threads:
            thread.start()

    # -- admission ----------------------------------------------------------------------------------------
    def retry_after(self) -> int:
        with self._cond:
            backlog = len(self._queue) + len(self._running) + self._reserved
        return max(1, min(3600, math.ceil(self._mean_s * (backlog + 1) / self.settings.workers)))

    def reserve(self) -> Ticket:
        """Admit one generation or raise 503 (`queue_full` with Retry-After, or `shutting_down`)."""
        with self._cond:
            self._expire_locked()
            if self._closing:
                raise _CANCEL_ERRORS["shutdown"]
            if len(self._queue) + len(self._running) + self._reserved >= self.capacity:
                busy = True
            else:
                busy = False
                self._reserved += 1
        if busy:
            raise ApiError(
                503, "queue_full", "the server is busy; retry later", {"Retry-After": str(self.retry_after())}
            )
        return Ticket(self)

    def _release_reservation(self) -> None:
        with self._cond:
            self._reserved -= 1

    def _submit(self, spec: JobSpec, keep: bool) -> Job:
        job = Job(spec, keep)
        with self._cond:
            self._reserved -= 1
            if self._closing:
                raise _CANCEL_ERRORS["shutdown"]
            self._queue.append(job)
            self._jobs[job.id] = job
            self._cond.notify()
        return job

    # -- queries ------------------------------------------------------------------------------------------
    def get(self, job_id: str) -> Job:
        with self._cond:
            self._expire_locked()
            job = self._jobs.get(job_id)
        if job is None:
            raise ApiError(404, "job_not_found", "no such job (finished jobs are kept for a limited time)")
        return job

    def position(self, job: Job) -> int | None:
        with self._cond:
            try:
                return self._queue.index(job)
            except ValueError:
                return None

    def stats(self) -> dict[str, Any]:
        with self._cond:
            self._expire_locked()
            return {
                "running": len(self._running),
                "queued": len(self._queue),
                "capacity": self.capacity,
                "accepting": not self._closing,
                "full": len(self._queue) + len(self._running) + self._reserved >= self.capacity,
                "completed": self.completed,
            }

    # -- cancellation and cleanup -------------------------------------------------------------------------
    def cancel(self, job: Job, reason: str = "client") -> None:
        """Cancel a queued job at once, a running one before its next step; a finished one is forgotten."""
        with self._cond:
            if job.state == "queued":
                with contextlib.suppress(ValueError):
                    self._queue.remove(job)
                self._finish_locked(job, "cancelled", _CANCEL_ERRORS[reason])
            elif job.state == "running":
                job.cancel_reason = job.cancel_reason or reason
            else:
                self._jobs.pop(job.id, None)
        job.notify()

    def discard(self, job: Job) -> None:
        """Forget a finished job (its waiter has its result)."""
        with self._cond:
            if job.terminal:
                self._jobs.pop(job.id, None)

    def begin_shutdown(self) -> None:
        """Stop admitting; queued jobs fail at once with 503 `shutting_down`; running ones go on."""
        with self._cond:
            if self._closing:
                return
            self._closing = True
            dropped = list(self._queue)
            self._queue.clear()
            for job in dropped:
                self._finish_locked(job, "failed", _CANCEL_ERRORS["shutdown"])
            self._cond.notify_all()
        for job in dropped:
            job.notify()
        if dropped:
            logger.info("shutting down: %d queued job(s) refused", len(dropped))

    def close(self, timeout: float = 5.0) -> None:
        """Shut down: wait up to `timeout` for running jobs, then cancel them; join the workers."""
        self.begin_shutdown()
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._running and time.monotonic() < deadline:
                self._cond.wait(0.05)
            for job in self._running:
                job.cancel_reason = job.cancel_reason or "shutdown"
        for thread in self._threads:
            thread.join(timeout=max(0.1, deadline - time.monotonic()) + 5.0)

    def _expire_locked(self) -> None:
        now = time.monotonic()
        wait_cap = self.settings.max_queue_wait_s
        for job in [j for j in self._queue if now - j.created > wait_cap]:
            self._queue.remove(job)
            self._finish_locked(job, "failed", _CANCEL_ERRORS["queue_timeout"])
            job.notify()
        finished = [j for j in self._jobs.values() if j.terminal]
        for job in finished:
            if job.finished is not None and now - job.finished > self.settings.result_ttl_s:
                del self._jobs[job.id]
        kept = sorted((j for j in self._jobs.values() if j.terminal), key=lambda j: j.finished or 0.0)
        for job in kept[: max(0, len(kept) - self.settings.max_finished_jobs)]:
            del self._jobs[job.id]

    def _finish_locked(self, job: Job, state: str, error: ApiError | None = None) -> None:
        job.state, job.error, job.finished, job.spec = state, error, time.monotonic(), None
        self._cond.notify_all()

    # -- workers ------------------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return  # closing and nothing left
                job = self._queue.popleft()
                if time.monotonic() - job.created > self.settings.max_queue_wait_s:
                    self._finish_locked(job, "failed", _CANCEL_ERRORS["queue_timeout"])
                    job.notify()
                    continue
                job.state, job.started = "running", time.monotonic()
                job.deadline = job.started + self.settings.request_timeout_s
                self._running.add(job)
            job.notify()
            self._run(job)

    def _run(self, job: Job) -> None:
        spec = job.spec
        assert spec is not None
        state, error, png = "failed", None, None
        try:
            control = spec.control
            if spec.preprocessor is not None:
                control = self.engine.preprocess(control, spec.preprocessor, job.params.seed)

            def progress(done: int, total: int) -> None:
                job.step, job.total = done, total
                job.notify()

            image = self.engine.generate(job.params, control, progress, job)
            if job.is_set():  # cancelled during the last step: the client asked for no image
                raise CancelledError("cancelled")
            png, state = encode_png(image), "done"
        except CancelledError:
            reason = job.cancel_reason or "client"
            state, error = ("cancelled" if reason == "client" else "failed"), _CANCEL_ERRORS[reason]
        except ApiError as err:
            error = err
        except ConfigError as err:  # the runtime refused the arguments (checked before; should not happen)
            logger.warning("generation refused by the model: %s", type(err).__name__)
            error = ApiError(422, "invalid_request", "the model cannot generate with these settings")
        except Exception as err:
            logger.error("generation failed with %s", type(err).__name__, exc_info=logger.isEnabledFor(logging.DEBUG))
            error = ApiError(500, "inference_failed", "the model failed on this request; the server is still up")
        elapsed = time.monotonic() - (job.started or time.monotonic())
        with self._cond:
            self._running.discard(job)
            if state == "done":
                self.completed += 1
                self._mean_s = 0.8 * self._mean_s + 0.2 * elapsed if self.completed > 1 else elapsed
            job.png = png
            self._finish_locked(job, state, error)
        job.notify()
        logger.debug("job finished: %s in %.3f s (%d steps)", state, elapsed, job.params.steps)


async def wait_until_done(job: Job, manager: JobManager, is_disconnected: Any = None, poll_s: float = 0.5) -> None:
    """Wait for `job` to finish; if the client goes away first, cancel it (its slot frees at once if queued)."""
    event = job.subscribe()
    try:
        while not job.terminal:
            event.clear()
            if job.terminal:
                break
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(event.wait(), poll_s)
            if job.terminal:
                break
            manager.stats()  # expires jobs that waited past max_queue_wait_s
            if is_disconnected is not None and await is_disconnected():
                manager.cancel(job, "client")
                return
    finally:
        job.unsubscribe(event)


async def job_events(job: Job, manager: JobManager, keepalive_s: float = 15.0) -> AsyncIterator[str]:
    """Server-sent events: one `queued`/`running` event per change of state or step, then the final state."""
    event = job.subscribe()
    last: tuple[str, int, int | None] | None = None
    quiet = 0.0
    try:
        while True:
            event.clear()
            status = job.status(manager.position(job) if job.state == "queued" else None)
            key = (status.status, status.progress.step, status.position)
            if key != last:
                last, quiet = key, 0.0
                yield f"event: {status.status}\ndata: {status.model_dump_json()}\n\n"
                # Decide from the snapshot just sent, not from `job.terminal` now: a job that finished after the
                # snapshot was taken would end the stream without its final event.
                if status.status in TERMINAL:
                    return
            elif quiet >= keepalive_s:
                quiet = 0.0
                yield ": keep-alive\n\n"
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(event.wait(), 1.0)
            quiet += 1.0
            manager.stats()
    finally:
        job.unsubscribe(event)
