"""The run directory: refuse to clobber finished runs, and save the deployable student atomically."""

import json
import logging
import shutil

from diffusers import StableDiffusionControlNetPipeline

from refine_control.atomic import atomic_dir
from refine_control.config import DistillConfig
from refine_control.errors import ConfigError
from refine_control.models.denoiser import ControlledDenoiser
from refine_control.models.teacher import Teacher

logger = logging.getLogger(__name__)


def is_finished(run) -> bool:  # noqa: ANN001 - Path
    return (run / "student" / "model_index.json").is_file()


def prepare_run_dir(cfg: DistillConfig) -> None:
    """Create, continue or (with --overwrite) replace the run dir; never touch a dir that is not a run dir."""
    run = cfg.output_dir
    if run.exists() and not run.is_dir():
        raise ConfigError(f"--output-dir {run} is a file")
    occupied = run.is_dir() and any(run.iterdir())
    is_run = (run / "config.json").is_file()
    if occupied and not is_run:
        raise ConfigError(
            f"--output-dir {run} is not empty and is not a refine-control run dir",
            hint="choose a new or empty directory",
        )
    if occupied and cfg.overwrite:
        shutil.rmtree(run)
    elif occupied and is_finished(run):
        raise ConfigError(f"{run} already holds a finished run", hint="pass --overwrite to replace it, or another --output-dir")
    elif occupied and not cfg.resume:
        raise ConfigError(f"{run} holds an unfinished run", hint="pass --resume to continue it or --overwrite to start over")
    elif occupied:
        saved = json.loads((run / "config.json").read_text())
        differences = cfg.resume_differences(saved)
        if differences:
            raise ConfigError(
                f"--resume with options that differ from the saved run: {'; '.join(differences)}",
                hint="resume with the original options, or start over with --overwrite",
            )
    elif cfg.resume:
        raise ConfigError(f"--resume: there is no run to resume in {run}")
    (run / "logs").mkdir(parents=True, exist_ok=True)


def save_student(path, teacher: Teacher, student: ControlledDenoiser) -> None:  # noqa: ANN001 - Path
    """Write the student as a full `StableDiffusionControlNetPipeline` dir (teacher's VAE, text encoder,
    tokenizer and scheduler; the student's UNet and ControlNet), loadable with `from_pretrained`."""
    pipeline = StableDiffusionControlNetPipeline(
        vae=teacher.vae, text_encoder=teacher.text_encoder, tokenizer=teacher.tokenizer, unet=student.unet,
        controlnet=student.controlnet, scheduler=teacher.scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    with atomic_dir(path) as tmp:
        pipeline.save_pretrained(tmp, safe_serialization=True)
    logger.info("student saved to %s", path)
