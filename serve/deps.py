"""Dependencies shared by the routes: settings, engine, job manager, admission, and strict JSON bodies."""

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from pydantic import BaseModel, ValidationError

from refine_control.serve.engine import Engine
from refine_control.serve.jobs import JobManager, Ticket
from refine_control.serve.schemas import ApiError
from refine_control.serve.settings import ServeSettings

ModelT = TypeVar("ModelT", bound=BaseModel)


def get_app_settings(request: Request) -> ServeSettings:
    return request.app.state.settings


def get_engine(request: Request) -> Engine:
    engine = getattr(request.app.state, "engine", None)
    if engine is None:
        raise ApiError(503, "model_loading", "the model is not loaded yet", {"Retry-After": "5"})
    return engine


def get_jobs(request: Request) -> JobManager:
    jobs = getattr(request.app.state, "jobs", None)
    if jobs is None:
        raise ApiError(503, "model_loading", "the model is not loaded yet", {"Retry-After": "5"})
    return jobs


async def admit(jobs: Annotated[JobManager, Depends(get_jobs)]) -> AsyncIterator[Ticket]:
    """A slot in the work queue (503 + Retry-After when there is none). The body has been read by then (the
    guard middleware reads it with a deadline), but not parsed: an overloaded server parses and decodes nothing."""
    ticket = jobs.reserve()
    try:
        yield ticket
    finally:
        ticket.release()  # no-op once a job holds it


SettingsDep = Annotated[ServeSettings, Depends(get_app_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
JobsDep = Annotated[JobManager, Depends(get_jobs)]
TicketDep = Annotated[Ticket, Depends(admit)]


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ApiError(400, "invalid_json", "the JSON body repeats a key")
        out[key] = value
    return out


def validation_detail(err: ValidationError | Any, known_fields: set[str] | None = None) -> ApiError:
    """A 422 naming the offending fields and why, without the values (pydantic's `input` is dropped)."""
    fields, reasons = [], []
    if isinstance(err, ValidationError):
        items = err.errors(include_url=False, include_input=False, include_context=False)
    else:  # FastAPI's RequestValidationError: plain dicts, `input` included (never used here)
        items = list(err.errors())
    for item in items:
        loc = [str(part) for part in item.get("loc", ()) if part not in ("body", "query", "path")]
        name = ".".join(loc) if loc else "(request)"
        if loc and known_fields is not None and loc[0] not in known_fields:
            name = "(unknown field)"  # an unknown key is client text: do not repeat it
        fields.append(name)
        reasons.append(f"{name}: {item.get('msg', 'invalid')}")
    detail = "; ".join(reasons)
    if len(detail) > 400:
        detail = detail[:397] + "..."
    return ApiError(422, "invalid_request", detail or "invalid request")


async def read_json(request: Request, model: type[ModelT]) -> ModelT:
    """Read and validate a JSON body: `application/json` only, UTF-8, no duplicate keys, then `model` (strict)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "send the request as `Content-Type: application/json`")
    body = await request.body()
    try:
        data = json.loads(body.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise ApiError(400, "invalid_json", "the body is not valid UTF-8 JSON") from None
    except ValueError:  # an integer longer than Python's int-digits limit (4300) raises this inside the parser
        raise ApiError(400, "invalid_json", "the body holds a number too long to read") from None
    finally:
        del body
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise validation_detail(err, set(model.model_fields)) from None
