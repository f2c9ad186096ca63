"""`GET /v1/models`: the loaded model's manifest summary and the request limits a client must respect."""

from fastapi import APIRouter, Request

from refine_control.preprocess import PREPROCESSORS
from refine_control.serve.deps import EngineDep, SettingsDep
from refine_control.serve.device import URL as DEVICE_URL
from refine_control.serve.routes.generate import output_limits
from refine_control.serve.schemas import DeviceMode, Limits, ModelCard, ModelsResponse, error_responses
from refine_control.serve.settings import (
    MAX_CONTROLNET_SCALE,
    MAX_GUIDANCE_SCALE,
    MAX_PROMPT_CHARS,
    MAX_SEED,
)

router = APIRouter(tags=["models"])


@router.get("/models", summary="The loaded model and the limits of this server", responses=error_responses(401, 503))
async def list_models(request: Request, engine: EngineDep, settings: SettingsDep) -> ModelsResponse:
    low, high = output_limits(engine, settings)
    limits = Limits(
        max_prompt_chars=MAX_PROMPT_CHARS,
        max_steps=min(settings.max_steps, engine.max_steps),
        max_guidance_scale=MAX_GUIDANCE_SCALE,
        max_controlnet_scale=MAX_CONTROLNET_SCALE,
        max_seed=MAX_SEED,
        min_output_side=low,
        max_output_side=high,
        size_multiple=engine.size_multiple,
        max_body_bytes=settings.max_body_bytes,
        max_image_bytes=settings.max_image_bytes,
        max_image_pixels=settings.max_image_pixels,
        preprocessors=PREPROCESSORS.names(),
    )
    folder = request.app.state.device
    device = (
        DeviceMode(available=True, url=DEVICE_URL)
        if folder.available
        else DeviceMode(available=False, note=folder.note)
    )
    return ModelsResponse(models=[ModelCard(**engine.model_card())], limits=limits, device=device)
