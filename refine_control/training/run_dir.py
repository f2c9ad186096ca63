"""The run directory: refuse to clobber finished runs, save the deployable student atomically and read it back,
and keep `metrics.jsonl` in step with a resumed run."""

import dataclasses
import json
import logging
import math
import shutil
import statistics
from pathlib import Path
from typing import Any

import torch
from diffusers import StableDiffusionControlNetPipeline

from refine_control.atomic import atomic_dir, write_json, write_text
from refine_control.errors import ConfigError, write_error
from refine_control.models.denoiser import ControlledDenoiser
from refine_control.models.teacher import Teacher
from refine_control.runtime.sampling import SAMPLING_FILE, SamplingRecommendation
from refine_control.runtime.schedulers import lcm_start_timestep
from refine_control.training.checkpoint import list_checkpoints, whole
from refine_control.training.config import DistillConfig

logger = logging.getLogger(__name__)


def is_finished(run) -> bool:
    return (run / "student" / "model_index.json").is_file()


def has_progress(run: Path) -> bool:
    """Whether `run` holds work worth keeping: a checkpoint, or a stage of the fast recipe (RUN/stages/*) with a
    checkpoint or a finished student."""
    stages = sorted((run / "stages").glob("*")) if (run / "stages").is_dir() else []
    return bool(list_checkpoints(run / "checkpoints")) or any(
        is_finished(stage) or list_checkpoints(stage / "checkpoints") for stage in stages
    )


def prepare_run_dir(cfg: DistillConfig, world: int = 1) -> None:
    """Create, continue or (with --overwrite) replace the run dir; never touch a dir that is not a run dir.

    `config.json` is written first, so even a run that fails early is recognisable as a run dir; one that stopped
    before its first checkpoint holds nothing worth keeping and is simply started again.
    """
    run = cfg.output_dir
    if run.exists() and not run.is_dir():
        raise ConfigError(f"-o {run} is a file")
    occupied = run.is_dir() and any(run.iterdir())
    if occupied and not (run / "config.json").is_file():
        raise ConfigError(
            f"-o {run} is not empty and is not a refine-control run dir",
            hint="choose a new or empty directory",
        )
    has_checkpoints = has_progress(run)
    if occupied and cfg.overwrite:
        shutil.rmtree(run)
    elif occupied and is_finished(run):
        raise ConfigError(f"{run} already holds a finished run", hint="pass --overwrite to replace it, or another -o")
    elif occupied and cfg.resume:
        differences = cfg.resume_differences(json.loads((run / "config.json").read_text()), world)
        if differences:
            raise ConfigError(
                f"--resume with options that differ from the saved run: {'; '.join(differences)}",
                hint="resume with the original options, or start over with --overwrite",
            )
    elif occupied and has_checkpoints:
        raise ConfigError(
            f"{run} holds an unfinished run", hint="pass --resume to continue it or --overwrite to start over"
        )
    elif occupied:
        logger.info("%s stopped before its first checkpoint; starting it again", run)
        shutil.rmtree(run)
    elif cfg.resume:
        raise ConfigError(f"--resume: there is no run to resume in {run}")
    try:  # the first write: an output dir that cannot be made is named as the user gave it
        (run / "logs").mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise write_error(run, err) from None
    if not (run / "config.json").is_file():
        write_json(run / "config.json", cfg.to_json())


def save_student(
    path: Path,
    teacher: Teacher,
    student: ControlledDenoiser,
    sampling: SamplingRecommendation,
    vae: Any = None,
) -> None:
    """Write the student as a full `StableDiffusionControlNetPipeline` dir (teacher's VAE, text encoder,
    tokenizer and scheduler; the student's UNet and ControlNet), loadable with `from_pretrained`, and beside
    `model_index.json` its sampling recommendation (`sampling.json`), which every consumer defaults to.

    A few-step student (recommended scheduler `LCMScheduler`) gets diffusers' `LCMScheduler` on the teacher's noise
    schedule and, unless its recommendation names one, the start timestep `lcm_start_timestep` picks for that
    schedule; a guided one keeps the teacher's scheduler."""
    scheduler = teacher.scheduler
    if sampling.scheduler == "LCMScheduler":
        from diffusers import LCMScheduler

        scheduler = LCMScheduler.from_config(teacher.scheduler.config)
        if sampling.first_timestep is None:
            start = lcm_start_timestep(dict(scheduler.config))
            sampling = dataclasses.replace(sampling, first_timestep=start)
    sampling = dataclasses.replace(sampling, scheduler=type(scheduler).__name__)
    pipeline = StableDiffusionControlNetPipeline(
        vae=vae if vae is not None else teacher.vae,
        text_encoder=teacher.text_encoder,
        tokenizer=teacher.tokenizer,
        unet=student.unet,
        controlnet=student.controlnet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    with atomic_dir(path) as tmp:
        pipeline.save_pretrained(tmp, safe_serialization=True)
        (tmp / SAMPLING_FILE).write_text(json.dumps(sampling.to_json(), indent=2))
    logger.info("student saved to %s", path)


def unsharded(student: ControlledDenoiser) -> ControlledDenoiser:
    """The student itself, or under FSDP2 a whole copy on CPU for saving (a collective: every process calls it)."""
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    if not any(isinstance(p, DTensor) for p in student.parameters()):
        return student

    def copy(model: Any) -> Any:
        state = {name: whole(value) for name, value in model.state_dict().items()}
        plain = next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule))  # fully_shard subclasses it
        fresh = plain.from_config(model.config)
        fresh.load_state_dict(state)
        return fresh

    return ControlledDenoiser(copy(student.unet), copy(student.controlnet))


def load_run_student(run: Path, device: torch.device) -> ControlledDenoiser:
    """A finished run's student (UNet + ControlNet), in fp32 on `device`."""
    from refine_control.models.pipeline_dir import load_pipeline

    pipeline = load_pipeline(run / "student")
    return ControlledDenoiser(pipeline.unet, pipeline.controlnet).to(device)


def truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop log rows written after the checkpoint so the log matches an uninterrupted run."""
    if not path.is_file():
        return
    rows = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    write_text(path, "".join(row + "\n" for row in rows))


def last_terms(path: Path) -> dict[str, float]:
    """Mean of each loss term over the last 10% of logged rows."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    if not rows:
        return {}
    tail = rows[-max(1, math.ceil(len(rows) / 10)) :]
    return {k: statistics.fmean(r[k] for r in tail if k in r) for k in ("task", "output", "feature") if k in tail[-1]}
