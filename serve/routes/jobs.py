"""The jobs API: submit a generation, follow its per-step progress (server-sent events), fetch it, or cancel it.

Job ids are random 128-bit tokens and act as capabilities: only the client that submitted a job knows its id.
A finished job is kept for `result_ttl_s` seconds (and at most `max_finished_jobs` of them), then forgotten.
"""

from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.responses import Response, StreamingResponse

from refine_control.serve.deps import EngineDep, JobsDep, SettingsDep, TicketDep, read_json
from refine_control.serve.jobs import Job, JobManager, job_events
from refine_control.serve.routes.generate import GENERATE_BODY, build_spec
from refine_control.serve.schemas import ApiError, GenerateRequest, JobStatus, error_responses

router = APIRouter(prefix="/jobs", tags=["jobs"])

JobId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{16,64}$", description="the id `POST /v1/jobs` returned")]


def _status(job: Job, jobs: JobManager) -> JobStatus:
    return job.status(jobs.position(job) if job.state == "queued" else None)


@router.post(
    "",
    status_code=202,
    summary="Queue a generation (same body as /v1/generate); follow it with /events, fetch it with /result",
    response_model=JobStatus,
    responses=error_responses(400, 401, 403, 413, 415, 422, 503),
    openapi_extra=GENERATE_BODY,
)
async def submit_job(
    request: Request, ticket: TicketDep, engine: EngineDep, jobs: JobsDep, settings: SettingsDep
) -> Response:
    req = await read_json(request, GenerateRequest)
    spec = await build_spec(req, engine, settings)
    job = ticket.submit(spec, keep=True)
    return Response(
        _status(job, jobs).model_dump_json(),
        status_code=202,
        media_type="application/json",
        headers={"Location": f"/v1/jobs/{job.id}", "X-Seed": str(job.params.seed)},
    )


@router.get("/{job_id}", summary="A job's state and progress", responses=error_responses(404, 422))
async def job_status(job_id: JobId, jobs: JobsDep) -> JobStatus:
    return _status(jobs.get(job_id), jobs)


@router.get(
    "/{job_id}/events",
    summary="Server-sent events: one per step (`running`), then `done`, `failed` or `cancelled`",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}, **error_responses(404, 422)},
)
async def job_stream(job_id: JobId, jobs: JobsDep) -> StreamingResponse:
    job = jobs.get(job_id)
    return StreamingResponse(
        job_events(job, jobs), media_type="text/event-stream", headers={"X-Accel-Buffering": "no"}
    )


@router.get(
    "/{job_id}/result",
    summary="The finished image (PNG without metadata); 409 while the job is queued or running",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, **error_responses(404, 409, 422, 500, 503, 504)},
)
async def job_result(job_id: JobId, jobs: JobsDep) -> Response:
    job = jobs.get(job_id)
    if not job.terminal:
        raise ApiError(409, "not_ready", "the job has not finished yet")
    if job.state != "done" or job.png is None:
        raise job.error or ApiError(409, "cancelled", "the job was cancelled")
    return Response(job.png, media_type="image/png", headers={"X-Seed": str(job.params.seed)})


@router.delete(
    "/{job_id}",
    summary="Cancel a job (a queued one at once, a running one before its next step) or forget a finished one",
    responses=error_responses(404, 422),
)
async def cancel_job(job_id: JobId, jobs: JobsDep) -> JobStatus:
    job = jobs.get(job_id)
    jobs.cancel(job, "client")
    return _status(job, jobs)
