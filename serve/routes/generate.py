"""`POST /v1/generate`: one image, returned when it is done (PNG, or base64 JSON on request).

The body has been read whole by the guard middleware (with a deadline) before this runs; a queue slot is taken
(`TicketDep`) before it is parsed, then the image is decoded and resized to the output size in a worker thread,
and the job waits in the bounded queue. A client that disconnects cancels its
job. For progress and explicit cancellation use the jobs API (`POST /v1/jobs`), which takes the same body.
"""

import base64
import secrets

import numpy as np
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from refine_control.serve.deps import EngineDep, JobsDep, SettingsDep, TicketDep, read_json
from refine_control.serve.engine import Engine, GenerationParams
from refine_control.serve.images import b64decode_image, decode_image, resize_rgb
from refine_control.serve.jobs import JobSpec, wait_until_done
from refine_control.serve.schemas import ApiError, GenerateRequest, GenerateResponse, error_responses
from refine_control.serve.settings import MAX_OUTPUT_SIDE, MAX_SEED, ServeSettings

router = APIRouter(tags=["generate"])

GENERATE_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": GenerateRequest.model_json_schema(mode="validation")}},
    }
}
ERRORS = error_responses(400, 401, 403, 409, 413, 415, 422, 500, 503, 504)


def output_limits(engine: Engine, settings: ServeSettings) -> tuple[int, int]:
    """(min side, max side) the server generates; sides are also multiples of `engine.size_multiple`."""
    max_side = settings.max_output_side or min(2 * engine.resolution, MAX_OUTPUT_SIDE)
    return engine.size_multiple, max(engine.size_multiple, max_side)


def resolve_params(req: GenerateRequest, engine: Engine, settings: ServeSettings) -> GenerationParams:
    """Fill defaults and check what depends on the model and the settings (422 `invalid_size` / `invalid_request`)."""
    low, high = output_limits(engine, settings)
    width = req.width if req.width is not None else engine.resolution
    height = req.height if req.height is not None else engine.resolution
    for name, value in (("width", width), ("height", height)):
        if value < low or value > high or value % engine.size_multiple:
            raise ApiError(
                422,
                "invalid_size",
                f"`{name}` must be a multiple of {engine.size_multiple} between {low} and {high}",
            )
    limit = min(settings.max_steps, engine.max_steps)
    steps = req.steps if req.steps is not None else min(engine.default_steps, limit)
    if steps > limit:
        raise ApiError(422, "invalid_request", f"steps: must be at most {limit}")
    guidance = req.guidance_scale if req.guidance_scale is not None else engine.default_guidance_scale
    if engine.guidance_range is not None and not engine.guidance_range[0] <= guidance <= engine.guidance_range[1]:
        low, high = engine.guidance_range
        raise ApiError(
            422,
            "invalid_request",
            f"guidance_scale: must be between {low:g} and {high:g} for this model (the range it was trained on)",
        )
    seed = req.seed if req.seed is not None else secrets.randbelow(MAX_SEED + 1)
    return GenerationParams(
        prompt=req.prompt,
        negative_prompt=req.negative_prompt,
        steps=steps,
        guidance_scale=float(guidance),
        controlnet_scale=float(req.controlnet_scale),
        seed=seed,
        width=width,
        height=height,
    )


def _decode_control(req: GenerateRequest, settings: ServeSettings, width: int, height: int) -> np.ndarray:
    field = "control_image" if req.control_image is not None else "image"
    text = req.control_image if req.control_image is not None else req.image
    assert text is not None
    rgb = decode_image(b64decode_image(text, settings, field), settings, field)
    return resize_rgb(rgb, width, height)


async def build_spec(req: GenerateRequest, engine: Engine, settings: ServeSettings) -> JobSpec:
    """Validated params plus the decoded control input at the output size (decoding runs off the event loop)."""
    params = resolve_params(req, engine, settings)
    control = await run_in_threadpool(_decode_control, req, settings, params.width, params.height)
    preprocessor = None
    if req.image is not None:
        preprocessor = req.preprocessor or engine.default_preprocessor
    return JobSpec(params=params, control=control, preprocessor=preprocessor)


@router.post(
    "/generate",
    summary="Generate one image from a prompt and a control image",
    response_class=Response,
    responses={
        200: {
            "content": {"image/png": {}, "application/json": {"schema": GenerateResponse.model_json_schema()}},
            "description": "the PNG (no metadata), or JSON when `response_format` is `b64_json`; "
            "the seed used is in the `X-Seed` header",
        },
        **ERRORS,
    },
    openapi_extra=GENERATE_BODY,
)
async def generate(
    request: Request, ticket: TicketDep, engine: EngineDep, jobs: JobsDep, settings: SettingsDep
) -> Response:
    req = await read_json(request, GenerateRequest)
    spec = await build_spec(req, engine, settings)
    job = ticket.submit(spec)
    try:
        await wait_until_done(job, jobs, request.is_disconnected)
    finally:
        if not job.terminal:
            jobs.cancel(job, "client")
    jobs.discard(job)
    if job.state != "done" or job.png is None:
        raise job.error or ApiError(409, "cancelled", "the job was cancelled")
    params = job.params
    headers = {"X-Seed": str(params.seed)}
    if req.response_format == "b64_json":
        elapsed = (job.finished or 0.0) - (job.started or 0.0)
        body = GenerateResponse(
            image=base64.b64encode(job.png).decode("ascii"),
            seed=params.seed,
            width=params.width,
            height=params.height,
            steps=params.steps,
            elapsed_s=round(elapsed, 4),
        )
        return Response(body.model_dump_json(), media_type="application/json", headers=headers)
    return Response(job.png, media_type="image/png", headers=headers)
