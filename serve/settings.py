"""`ServeSettings`: every knob of `refine-serve`, from CLI flags, `REFINE_SERVE_*` environment variables or defaults.

Every field has a default, so `ServeSettings()` always works; nothing is read at import time. The request-level
hard limits (prompt length, steps, scales, seed) are module constants because the request schema is built from
them; tests read them from here.
"""

import ipaddress
from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Request limits (see docs/serve.md). The schema in `schemas.py` is built from these.
MAX_PROMPT_CHARS = 1000
MAX_STEPS = 50
MAX_GUIDANCE_SCALE = 20.0
MAX_CONTROLNET_SCALE = 2.0
MAX_SEED = 2**32 - 1
MAX_OUTPUT_SIDE = 2048  # hard cap; `max_output_side` may only lower it
MIB = 1 << 20

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback IP literals (127.0.0.0/8, ::1)."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ServeSettings(BaseSettings):
    """Settings of the local server. Environment variables: `REFINE_SERVE_<FIELD>` (e.g. `REFINE_SERVE_TOKEN`)."""

    model_config = SettingsConfigDict(env_prefix="REFINE_SERVE_", extra="ignore", frozen=True)

    # The model and how it runs.
    model_dir: Path | None = Field(None, description="a `refine-export` model dir")
    precision: str = Field(
        "auto",
        description="denoiser precision to load: auto (the fastest in the dir that passed parity), fp32, int8 or fp16",
    )
    model_format: str = Field("onnx", description="onnx, or ort for ONNX Runtime's mobile format")
    scheduler: str | None = Field(None, description="override the model's scheduler (ddim, euler, ...)")
    threads: int | None = Field(None, ge=1, le=256, description="ONNX Runtime intra-op threads (default: all CPUs)")
    warmup: bool = Field(True, description="run one 1-step generation at start-up, before accepting requests")
    web_dir: Path | None = Field(
        None, description="the browser folder served at /device/ (the on-device mode); written from the model if empty"
    )

    # Network exposure.
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    token: SecretStr | None = Field(None, description="bearer token; required for a non-loopback bind")
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="extra Host header names accepted besides the loopback ones ('*' turns the check off)",
    )

    # Request limits.
    max_body_bytes: int = Field(16 * MIB, ge=1024, description="largest request body (413 above)")
    max_image_bytes: int = Field(10 * MIB, ge=1024, description="largest encoded image (413 above)")
    max_image_pixels: int = Field(4096 * 4096, ge=64 * 64, description="largest decoded image (413 above)")
    min_image_side: int = Field(16, ge=1, description="smallest accepted image side (422 below)")
    max_image_side: int = Field(8192, ge=64, description="largest accepted image side (413 above)")
    max_output_side: int | None = Field(
        None, ge=8, le=MAX_OUTPUT_SIDE, description="largest width/height to generate (default: 2 × the model's)"
    )
    max_steps: int = Field(MAX_STEPS, ge=1, le=MAX_STEPS)

    # Work queue.
    workers: int = Field(1, ge=1, le=16, description="generations run at once (ONNX Runtime already uses all cores)")
    queue_size: int = Field(4, ge=0, le=1024, description="generations that may wait; more → 503 + Retry-After")
    max_queue_wait_s: float = Field(60.0, gt=0, description="a job waiting longer fails with 503")
    request_timeout_s: float = Field(120.0, gt=0, description="a running generation longer than this → 504")
    result_ttl_s: float = Field(300.0, gt=0, description="how long a finished job's image is kept for pickup")
    max_finished_jobs: int = Field(16, ge=1, le=1024, description="finished jobs kept for pickup (oldest dropped)")

    # Slow and idle clients (see connections.py and body.py).
    header_timeout_s: float = Field(
        5.0, gt=0, le=300, description="a request head must arrive complete within this (else the socket is closed)"
    )
    body_timeout_s: float = Field(30.0, gt=0, le=3600, description="a request body must arrive within this (408)")
    max_buffered_bytes: int = Field(
        128 * MIB, ge=1024, description="request bodies held at once, all requests together (503 above)"
    )
    limit_concurrency: int = Field(
        512,
        ge=4,
        le=65536,
        description="open connections; beyond it the longest-idle one is closed, or 503 when none is idle",
    )

    # Process.
    graceful_shutdown_s: float = Field(30.0, ge=0, description="how long in-flight requests may finish at exit")
    log_level: str = "info"
    access_log: bool = True

    @model_validator(mode="after")
    def _budget_fits_a_body(self) -> "ServeSettings":
        if self.max_buffered_bytes < self.max_body_bytes:
            raise ValueError("max_buffered_bytes must be at least max_body_bytes")
        return self

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        if isinstance(value, str):  # REFINE_SERVE_ALLOWED_HOSTS=a,b also works besides the JSON list form
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("precision")
    @classmethod
    def _check_precision(cls, value: str) -> str:
        if value not in ("auto", "fp32", "int8", "fp16"):
            raise ValueError(f"precision must be auto, fp32, int8 or fp16, got {value!r}")
        return value

    @field_validator("model_format")
    @classmethod
    def _check_format(cls, value: str) -> str:
        if value not in ("onnx", "ort"):
            raise ValueError(f"model_format must be onnx or ort, got {value!r}")
        return value

    @field_validator("log_level")
    @classmethod
    def _check_level(cls, value: str) -> str:
        value = value.lower()
        if value not in ("critical", "error", "warning", "info", "debug"):
            raise ValueError(f"log_level must be one of critical, error, warning, info, debug, got {value!r}")
        return value

    @property
    def token_value(self) -> str | None:
        return self.token.get_secret_value() if self.token is not None else None

    @property
    def admission_capacity(self) -> int:
        """Generations admitted at once: running plus waiting."""
        return self.workers + self.queue_size

    def host_allow_list(self) -> set[str] | None:
        """Accepted Host names (lower case, no port, IPv6 without brackets); None when the check is off."""
        if "*" in self.allowed_hosts:
            return None
        names = set(LOOPBACK_NAMES)
        names.update(h.strip().strip("[]").lower() for h in self.allowed_hosts if h.strip())
        if self.host not in ("0.0.0.0", "::", ""):
            names.add(self.host.strip("[]").lower())
        return names


@lru_cache
def get_settings() -> ServeSettings:
    """The process's settings (from the environment); `create_app(settings)` and tests pass their own instead."""
    return ServeSettings()
