"""Liveness and readiness: answered on the event loop from counters only, so they stay fast while generating."""

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: the model is loaded and the queue has room (503 otherwise)",
    responses={503: {"description": "loading, shutting down, or the queue is full"}},
)
async def readyz(request: Request) -> JSONResponse:
    jobs = getattr(request.app.state, "jobs", None)
    if jobs is None:
        return JSONResponse({"status": "loading"}, status_code=503)
    stats = jobs.stats()
    ready = stats["accepting"] and not stats["full"]
    body = {"status": "ready" if ready else ("busy" if stats["accepting"] else "shutting_down"), **stats}
    return JSONResponse(body, status_code=200 if ready else 503)
