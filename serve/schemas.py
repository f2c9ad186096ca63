"""Request and response models of the REST API, with every field bounded, plus the one error contract.

Every error body is `{"error": "<stable_code>", "detail": "<one line>"}` (validation errors add `fields`, the
names of the offending fields). No error ever repeats what the client sent: no prompt, no image bytes, no value.
"""

import unicodedata
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from refine_control.preprocess import PREPROCESSORS
from refine_control.serve.settings import (
    MAX_CONTROLNET_SCALE,
    MAX_GUIDANCE_SCALE,
    MAX_OUTPUT_SIDE,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    MAX_STEPS,
)

# aux:* preprocessors need controlnet-aux, which imports torch; the server offers only the built-in ones.
PreprocessorName = Literal[tuple(PREPROCESSORS.names())]  # type: ignore[valid-type]
# The models use strict mode: no str → int/float coercion, no bool as int, no float as int, no NaN/Infinity.
# Base64 text of the largest image any setting allows (the byte limit itself is checked after decoding).
MAX_BASE64_CHARS = 32 << 20


class ApiError(Exception):
    """An expected failure with an HTTP status and a stable machine code; `detail` is one line, no user input."""

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers or {}


def _clean_text(value: str) -> str:
    """NFC-normalise; refuse NUL and other control characters (tab and newlines are allowed)."""
    value = unicodedata.normalize("NFC", value)
    if any(unicodedata.category(ch) == "Cc" and ch not in "\t\n\r" for ch in value):
        raise ValueError("must not contain control characters")
    if len(value) > MAX_PROMPT_CHARS:
        raise ValueError(f"must be at most {MAX_PROMPT_CHARS} characters")
    return value


Prompt = Annotated[str, Field(max_length=MAX_PROMPT_CHARS)]  # checked again after NFC normalisation
ImageB64 = Annotated[str, Field(min_length=1, max_length=MAX_BASE64_CHARS)]
Side = Annotated[int, Field(ge=8, le=MAX_OUTPUT_SIDE)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)


def _image_field() -> Any:
    return Field(
        None,
        description="base64 PNG/JPEG/WebP (a `data:` URL prefix is allowed) to turn into a control map with "
        "`preprocessor`",
    )


def _preprocessor_field() -> Any:
    return Field(None, description="how `image` becomes the control map (default: the model's own preprocessor)")


class GenerateRequest(_Strict):
    """One image from a prompt and a control image (A1111/diffusers field names)."""

    prompt: Prompt = Field(..., description=f"UTF-8, at most {MAX_PROMPT_CHARS} characters (CLIP reads 77 tokens)")
    negative_prompt: Prompt = Field("", description="what to steer away from (used when guidance_scale > 1)")
    control_image: ImageB64 | None = Field(
        None,
        description="base64 PNG/JPEG/WebP control map used as it is (e.g. white edges on black); "
        "give either this or `image`",
    )
    image: ImageB64 | None = _image_field()
    preprocessor: PreprocessorName | None = _preprocessor_field()  # type: ignore[valid-type]
    steps: int | None = Field(
        None,
        ge=1,
        le=MAX_STEPS,
        description="denoising steps (default: the model's `recommended_steps`: 20, or a few-step student's own)",
    )
    guidance_scale: float | None = Field(
        None,
        ge=0.0,
        le=MAX_GUIDANCE_SCALE,
        description="guidance scale (default: the model's recommendation); ≤ 1 turns classifier-free guidance off; "
        "a guidance-distilled student reads it as an input in one pass",
    )
    controlnet_scale: float = Field(1.0, ge=0.0, le=MAX_CONTROLNET_SCALE, description="strength of the control image")
    seed: int | None = Field(
        None, ge=0, le=MAX_SEED, description="same seed and inputs → the same image; null picks one (returned)"
    )
    width: Side | None = Field(None, description="output width (default: the model's resolution)")
    height: Side | None = Field(None, description="output height (default: the model's resolution)")
    response_format: Literal["png", "b64_json"] = Field(
        "png", description="`png`: the image itself; `b64_json`: JSON with the image in base64"
    )

    @field_validator("prompt", "negative_prompt")
    @classmethod
    def _prompt(cls, value: str) -> str:
        return _clean_text(value)

    @model_validator(mode="after")
    def _one_image(self) -> "GenerateRequest":
        if (self.control_image is None) == (self.image is None):
            raise ValueError("give exactly one of `control_image` and `image`")
        if self.preprocessor is not None and self.image is None:
            raise ValueError("`preprocessor` applies to `image`, not to `control_image`")
        return self


class PreprocessRequest(_Strict):
    """Turn an image into the control map the model would see."""

    image: ImageB64 | None = _image_field()
    preprocessor: PreprocessorName | None = _preprocessor_field()  # type: ignore[valid-type]
    width: Side | None = Field(None, description="resize to this width first (default: the image's, capped)")
    height: Side | None = Field(None, description="resize to this height first (default: the image's, capped)")

    @model_validator(mode="after")
    def _needs_image(self) -> "PreprocessRequest":
        if self.image is None:
            raise ValueError("`image` is required")
        return self


class GenerateResponse(BaseModel):
    image: str = Field(..., description="base64 PNG")
    seed: int
    width: int
    height: int
    steps: int
    elapsed_s: float


class JobProgress(BaseModel):
    step: int = 0
    total: int = 0


class JobStatus(BaseModel):
    id: str
    status: Literal["queued", "running", "done", "failed", "cancelled"]
    position: int | None = Field(None, description="jobs ahead of this one while queued")
    progress: JobProgress
    seed: int
    width: int
    height: int
    error: str | None = None
    detail: str | None = None


class ModelCard(BaseModel):
    name: str
    precision: str
    available_precisions: list[str]
    model_format: str
    scheduler: str
    resolution: int
    size_multiple: int
    preprocessor: str | None
    recommended_steps: int = Field(..., description="the steps a request gets when it names none")
    recommended_guidance_scale: float = Field(..., description="the guidance scale a request gets when it names none")
    guidance_embedded: bool = Field(
        False, description="a few-step student that reads the guidance scale as an input (no CFG batch of 2)"
    )
    guidance_range: list[float] | None = Field(
        None, description="[min, max] guidance scales the model was trained on (others get 422); null: any"
    )
    extra: dict[str, Any] = Field(default_factory=dict, description="other manifest facts (versions, parity)")


class Limits(BaseModel):
    max_prompt_chars: int
    max_steps: int
    max_guidance_scale: float
    max_controlnet_scale: float
    max_seed: int
    min_output_side: int
    max_output_side: int
    size_multiple: int
    max_body_bytes: int
    max_image_bytes: int
    max_image_pixels: int
    preprocessors: list[str]


class DeviceMode(BaseModel):
    """The on-device mode (`refine-serve --web`): the page at `url` runs the model in the browser."""

    available: bool
    url: str | None = Field(None, description="the on-device page; null when the mode is off")
    note: str | None = Field(None, description="why the mode is off")


class ModelsResponse(BaseModel):
    models: list[ModelCard]
    limits: Limits
    device: DeviceMode


class ErrorBody(BaseModel):
    error: str = Field(..., description="stable machine code, e.g. `invalid_image`, `queue_full`")
    detail: str = Field(..., description="one line for people")
    fields: list[str] | None = Field(None, description="offending request fields (validation errors only)")


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries for the given status codes, all with the `ErrorBody` schema."""
    return {code: {"model": ErrorBody} for code in codes}
