"""A diffusers ControlNet pipeline directory (a teacher's, or a student's `RUN/student`): load it, and read the
sampling recommendation it holds (`sampling.json`). The one reader for training, evaluation and export."""

import json
import logging
from pathlib import Path

import diffusers
import torch
from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

from refine_control.errors import ConfigError
from refine_control.runtime.sampling import SAMPLING_FILE, SamplingRecommendation

logger = logging.getLogger(__name__)


def read_recommendation(pipeline_dir: str | Path) -> SamplingRecommendation | None:
    """The sampling recommendation a pipeline dir holds (`sampling.json`), or None for a dir without one."""
    path = Path(pipeline_dir) / SAMPLING_FILE
    if not path.is_file():
        return None
    try:
        return SamplingRecommendation.from_json(json.loads(path.read_text("utf-8")))
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path} is not a valid sampling file ({err})") from err


def schedule_kwargs(steps: int, timesteps: list[int] | None) -> dict[str, object]:
    """A diffusers pipeline call's schedule: `num_inference_steps`, or the recommended `timesteps` of a few-step
    student (whose start below T - 1 is on purpose: diffusers' LCMScheduler warning about it is silenced)."""
    if timesteps is None:
        return {"num_inference_steps": steps}
    logging.getLogger("diffusers.schedulers.scheduling_lcm").setLevel(logging.ERROR)
    return {"timesteps": list(timesteps)}


def load_pipeline(path: str | Path, controlnet: str | Path | None = None) -> StableDiffusionControlNetPipeline:
    """A `StableDiffusionControlNetPipeline` in fp32 from a local directory (optionally with another ControlNet)."""
    # A student's model_index.json names this module as its ControlNet's library; diffusers looks the class up in
    # the already-imported module and never imports a module a repository names.
    import refine_control.models.student  # noqa: F401

    path = Path(path)
    if not (path / "model_index.json").is_file():
        raise ConfigError(f"{path} is not a diffusers pipeline directory (no model_index.json)")
    extra = {}
    if not logger.isEnabledFor(logging.INFO):
        diffusers.utils.logging.disable_progress_bar()  # no per-component loading bars in quiet mode
    try:
        if controlnet is not None:
            extra["controlnet"] = ControlNetModel.from_pretrained(
                controlnet, dtype=torch.float32, local_files_only=True
            )
        pipeline = StableDiffusionControlNetPipeline.from_pretrained(
            path, dtype=torch.float32, local_files_only=True, safety_checker=None, requires_safety_checker=False,
            **extra,
        )  # fmt: skip
    except Exception as err:  # diffusers, transformers and safetensors raise many types for a broken dir
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"could not load a ControlNet pipeline from {path}: {first}") from err
    pipeline.set_progress_bar_config(disable=True)
    return pipeline
