"""`POST /v1/preprocess`: the control map the model would see for an image (PNG), e.g. to preview Canny edges."""

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from refine_control.serve.deps import EngineDep, SettingsDep, TicketDep, read_json
from refine_control.serve.engine import Engine
from refine_control.serve.images import (
    b64decode_image,
    control_map_to_uint8,
    decode_image,
    encode_png,
    fit_within,
    resize_rgb,
)
from refine_control.serve.routes.generate import output_limits
from refine_control.serve.schemas import ApiError, PreprocessRequest, error_responses
from refine_control.serve.settings import ServeSettings

router = APIRouter(tags=["preprocess"])


def _run(req: PreprocessRequest, engine: Engine, settings: ServeSettings) -> bytes:
    assert req.image is not None
    rgb = decode_image(b64decode_image(req.image, settings, "image"), settings, "image")
    _, high = output_limits(engine, settings)
    in_h, in_w = rgb.shape[:2]
    if req.width is None and req.height is None:
        width, height = fit_within(in_w, in_h, high)
    else:  # one side given: keep the aspect ratio
        width = req.width if req.width is not None else max(1, round(req.height * in_w / in_h))  # type: ignore[operator]
        height = req.height if req.height is not None else max(1, round(req.width * in_h / in_w))  # type: ignore[operator]
        if max(width, height) > high:
            raise ApiError(422, "invalid_size", f"`width` and `height` must be at most {high}")
    control = engine.preprocess(resize_rgb(rgb, width, height), req.preprocessor or engine.default_preprocessor)
    return encode_png(control_map_to_uint8(control))


@router.post(
    "/preprocess",
    summary="Turn an image into a control map with a built-in preprocessor (canny, lineart, shuffle, inpaint)",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, **error_responses(400, 401, 403, 413, 415, 422, 503)},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": PreprocessRequest.model_json_schema(mode="validation")}},
        }
    },
)
async def preprocess(request: Request, ticket: TicketDep, engine: EngineDep, settings: SettingsDep) -> Response:
    req = await read_json(request, PreprocessRequest)
    png = await run_in_threadpool(_run, req, engine, settings)
    return Response(png, media_type="image/png")
