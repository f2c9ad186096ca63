"""The web page (`/`) and the API reference (`/docs`): static files shipped in the package, no CDN."""

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from refine_control.serve.schemas import ApiError

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

router = APIRouter(include_in_schema=False)


@router.get("/")
async def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


@router.get("/docs")
async def docs() -> FileResponse:
    """A self-contained reference rendered from /openapi.json (Swagger UI would load its assets from a CDN)."""
    return FileResponse(STATIC_DIR / "docs.html", media_type="text/html")


def device_off_router(note: str) -> APIRouter:
    """`/device/...` while the on-device mode is off: 404 with the reason (`note`), not a bare "no such endpoint"."""
    off = APIRouter(include_in_schema=False)

    async def device_off() -> None:
        raise ApiError(404, "not_found", f"the on-device mode is {note}")

    off.add_api_route("/device", device_off, methods=["GET"])
    off.add_api_route("/device/{rest:path}", device_off, methods=["GET"])

    return off
