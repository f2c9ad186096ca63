"""The web page (`/`) and the API reference (`/docs`): static files shipped in the package, no CDN."""

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

router = APIRouter(include_in_schema=False)


@router.get("/")
async def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


@router.get("/docs")
async def docs() -> FileResponse:
    """A self-contained reference rendered from /openapi.json (Swagger UI would load its assets from a CDN)."""
    return FileResponse(STATIC_DIR / "docs.html", media_type="text/html")
