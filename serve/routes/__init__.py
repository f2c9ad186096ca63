"""The HTTP routes: `/v1/*` (the API), `/healthz` + `/readyz`, and the web page with its offline docs."""

from fastapi import APIRouter

from refine_control.serve.routes import generate, health, jobs, models, page, preprocess

api_router = APIRouter(prefix="/v1")
api_router.include_router(generate.router)
api_router.include_router(jobs.router)
api_router.include_router(preprocess.router)
api_router.include_router(models.router)

__all__ = ["api_router", "health", "page"]
