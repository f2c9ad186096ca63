"""What the server needs from a model: the `Engine` protocol, and `OnnxEngine`, the one that runs exported models.

The app only talks to an `Engine`, so routing and limit tests can use a stand-in, while every real generation goes
through `OnnxEngine` → `refine_control.runtime.OnnxControlNetPipeline` (ONNX Runtime and numpy;
no torch). Engines are called from worker threads; `generate` must be safe to call from several at once.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from refine_control.errors import ConfigError
from refine_control.preprocess import get_preprocessor
from refine_control.runtime.pipeline import CancelToken

if TYPE_CHECKING:
    from refine_control.serve.settings import ServeSettings

logger = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class GenerationParams:
    """One generation, already validated (sizes fit the model, numbers are in range)."""

    prompt: str
    negative_prompt: str
    steps: int
    guidance_scale: float
    controlnet_scale: float
    seed: int
    width: int
    height: int

    def __repr__(self) -> str:  # never let a prompt reach a log line through a repr
        return f"GenerationParams(steps={self.steps}, seed={self.seed}, size={self.width}x{self.height})"


class Engine(Protocol):
    """A loaded model. `resolution` is its trained size; generated sides must be multiples of `size_multiple`."""

    resolution: int
    size_multiple: int
    default_preprocessor: str
    default_steps: int  # the model's recommendation: what a request without `steps` gets
    max_steps: int  # the most steps its scheduler takes (a few-step student's: its grid below the start)
    default_guidance_scale: float
    guidance_range: tuple[float, float] | None  # the scales a guidance-distilled student was trained on; None: any

    def model_card(self) -> dict[str, Any]:
        """Manifest summary for `GET /v1/models` (fields of `schemas.ModelCard`); no file paths."""
        ...

    def preprocess(self, image: np.ndarray, name: str, seed: int = 0) -> np.ndarray:
        """RGB (H, W, 3) uint8 → control map (H, W, 3) float32 with the named built-in preprocessor."""
        ...

    def generate(
        self, params: GenerationParams, control: np.ndarray, progress: ProgressFn, cancel: CancelToken
    ) -> np.ndarray:
        """Control map (uint8 image or float map, any size) → (height, width, 3) uint8.

        Calls `progress(done, total)` after every step; raises `CancelledError` once `cancel.is_set()`.
        """
        ...


def run_preprocessor(image: np.ndarray, name: str, seed: int = 0) -> np.ndarray:
    """A built-in (numpy) preprocessor; `aux:*` ones are refused because controlnet-aux imports torch."""
    if name.startswith("aux:"):
        raise ConfigError(f"preprocessor {name!r} is not available in the server (it needs torch)")
    return get_preprocessor(name)(image, np.random.default_rng(seed))


class OnnxEngine:
    """An `Engine` over `OnnxControlNetPipeline`; the model dir's manifest and hashes are checked on load."""

    def __init__(
        self,
        model_dir: str | Path,
        precision: str = "fp32",
        *,
        model_format: str = "onnx",
        scheduler: str | None = None,
        threads: int | None = None,
    ) -> None:
        from refine_control.runtime import OnnxControlNetPipeline

        self.pipeline = OnnxControlNetPipeline(
            model_dir, precision, scheduler=scheduler, model_format=model_format, num_threads=threads
        )
        self.resolution = int(self.pipeline.resolution)
        self.size_multiple = int(self.pipeline.size_multiple)
        self.precision = self.pipeline.precision  # what "auto" resolved to
        self.default_steps = self.pipeline.sampling.steps
        self.max_steps = self.pipeline.max_steps
        self.default_guidance_scale = self.pipeline.sampling.guidance_scale
        self.guidance_range = self.pipeline.sampling.guidance_range
        preprocessor = self.pipeline.model.pipeline.get("preprocessor")
        self.default_preprocessor = preprocessor if isinstance(preprocessor, str) and preprocessor else "canny"

    def model_card(self) -> dict[str, Any]:
        info = dict(self.pipeline.info())
        manifest = self.pipeline.model.manifest
        extra: dict[str, Any] = {
            key: manifest[key] for key in ("format_version", "versions", "created") if key in manifest
        }
        source, export = manifest.get("source_run") or {}, manifest.get("export") or {}
        if isinstance(source, dict) and isinstance(source.get("student"), str):
            extra["student"] = source["student"]  # the preset name; the run's paths stay private
        if isinstance(export, dict) and "parity_passed" in export:
            extra["parity_passed"] = bool(export["parity_passed"])
        info["extra"] = extra
        return info

    def preprocess(self, image: np.ndarray, name: str, seed: int = 0) -> np.ndarray:
        return run_preprocessor(image, name, seed)

    def generate(
        self, params: GenerationParams, control: np.ndarray, progress: ProgressFn, cancel: CancelToken
    ) -> np.ndarray:
        return self.pipeline(
            params.prompt,
            control,
            params.negative_prompt,
            steps=params.steps,
            guidance_scale=params.guidance_scale,
            controlnet_scale=params.controlnet_scale,
            seed=params.seed,
            width=params.width,
            height=params.height,
            callback=progress,
            cancel=cancel,
        )


def load_engine(settings: "ServeSettings") -> OnnxEngine:
    """Load the settings' model dir, warmed up unless `settings.warmup` is off (`ConfigError` with a one-line
    reason when it cannot be loaded)."""
    if settings.model_dir is None:
        raise ConfigError(
            "no model dir given", hint="pass MODEL (a `refine-export` output dir) or set REFINE_SERVE_MODEL_DIR"
        )
    engine = OnnxEngine(
        settings.model_dir,
        settings.precision,
        model_format=settings.model_format,
        scheduler=settings.scheduler,
        threads=settings.threads,
    )
    logger.info(
        "loaded model %s (%s, %d px, sides in multiples of %d, %d steps by default)",
        Path(settings.model_dir).name,
        engine.precision,
        engine.resolution,
        engine.size_multiple,
        engine.default_steps,
    )
    if settings.warmup:
        warm_up(engine)
    return engine


def warm_up(engine: Engine) -> None:
    """One 1-step generation at the model's size: proves the graphs run and fills ONNX Runtime's arenas."""
    side = engine.resolution
    params = GenerationParams("", "", 1, engine.default_guidance_scale, 1.0, 0, side, side)
    engine.generate(params, np.zeros((side, side, 3), np.uint8), lambda done, total: None, _NeverCancel())


class _NeverCancel:
    def is_set(self) -> bool:
        return False
