"""What `train(cfg)` builds before its first step: teacher, data, student, loss and optimizer (`build_setup`)."""

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from refine_control.data.batches import Batches
from refine_control.data.training_data import TrainingData, open_training_data
from refine_control.errors import ConfigError
from refine_control.losses import TriLevelLoss
from refine_control.models.denoiser import ControlledDenoiser, with_guidance_input
from refine_control.models.initialise import initialise_student
from refine_control.models.presets import STUDENT_PRESETS, build_student, count_params
from refine_control.models.teacher import Teacher, load_teacher
from refine_control.training.config import DistillConfig
from refine_control.training.consistency import ConsistencyDistillation, DDIMSolver
from refine_control.training.distiller import DistillationModule, probe_channels
from refine_control.training.run_dir import load_run_student

logger = logging.getLogger(__name__)

LATENT_CACHE_BYTES = 1 << 30  # the latents of the training images are kept in memory up to this size


@dataclass
class Setup:
    """Everything built before the first step."""

    teacher: Teacher
    teacher_denoiser: ControlledDenoiser
    batches: Batches
    data: TrainingData
    module: DistillationModule | ConsistencyDistillation  # possibly wrapped by accelerate (DDP)
    optimizer: Any
    params: list[torch.nn.Parameter]
    trainable_names: list[str]
    taps: list[str]
    stage1_steps: int
    stage2_steps: int
    resolved: dict[str, Any]
    init_report: dict[str, Any]
    target: ControlledDenoiser | None = None  # few-step: the target network (an EMA of the student)
    solver: DDIMSolver | None = None  # few-step: the teacher's ODE solver


def stage_steps(cfg: DistillConfig, unlabelled: bool) -> tuple[int, int]:
    if cfg.few_step:
        return cfg.max_steps, 0
    stage2 = cfg.stage2_steps if cfg.stage2_steps is not None else (cfg.max_steps // 2 if unlabelled else 0)
    if stage2 > 0 and not unlabelled:
        raise ConfigError(
            f"`--stage2-steps {stage2}` needs unlabelled images, but none were found",
            hint="pass --unlabelled DIR (images without captions) or --stage2-steps 0",
        )
    if cfg.max_steps + stage2 == 0:
        raise ConfigError("nothing to train: `--max-steps` and `--stage2-steps` are both 0")
    return cfg.max_steps, stage2


def build_setup(cfg: DistillConfig, accelerator: Accelerator, weight_dtype: torch.dtype) -> Setup:
    run, main = cfg.output_dir, accelerator.is_main_process
    # 1. Teacher: frozen, in the trainer's dtype and on its device.
    teacher = load_teacher(
        cfg.teacher, cfg.controlnet, weight_dtype, accelerator.device, teacher_config=cfg.teacher_config
    )
    teacher_denoiser = ControlledDenoiser(teacher.unet, teacher.controlnet)

    # 2. Data (shapes materialised once for the builtin teacher; small datasets checked before training).
    with accelerator.main_process_first():
        data = open_training_data(cfg, run)
    stage1_steps, stage2_steps = stage_steps(cfg, data.has_unlabelled)
    size = cfg.resolution or teacher.resolution
    grid = teacher.vae_scale_factor * 2 ** (len(teacher.unet.config.block_out_channels) - 1)
    if size % grid:
        raise ConfigError(f"`--resolution` must be a multiple of {grid} for this teacher, got {size}")
    batches = data.batches(size, accelerator.num_processes, stage1_steps, accelerator.process_index)

    # 3. Student: a preset built from the teacher's configs (a shared UNet stays frozen), or for the few-step
    # stage a finished run's whole student, its UNet given the guidance input.
    torch.manual_seed(cfg.seed)
    if cfg.few_step:
        student = load_run_student(Path(cfg.from_run), accelerator.device)
        student.unet = with_guidance_input(student.unet)
        shares_unet, init_report = False, {"init": "from_run", "from_run": cfg.from_run}
    else:
        student_unet, student_controlnet = build_student(
            teacher.unet, teacher.controlnet, STUDENT_PRESETS.get(cfg.student)
        )
        student = ControlledDenoiser(student_unet, student_controlnet).to(accelerator.device)
        shares_unet = student_unet is teacher.unet
    trained = {"controlnet": student.controlnet} | ({} if shares_unet else {"unet": student.unet})
    if not cfg.few_step:
        init_report = initialise_student(cfg.init, {"controlnet": teacher.controlnet, "unet": teacher.unet}, trained)
    for part in trained.values():
        part.train().requires_grad_(True)

    # 4. Loss: the tri-level loss over the feature taps both models have (with student→teacher projectors), or
    # the consistency loss against a target network.
    target = solver = None
    if cfg.few_step:
        schedule = teacher.noise_scheduler()
        solver = DDIMSolver(schedule.alphas_cumprod.to(accelerator.device), cfg.solver_steps)
        module = ConsistencyDistillation(student, solver.alphas, schedule.config.prediction_type)
        target = copy.deepcopy(student).eval().requires_grad_(False)
        used_taps, loss_repr = [], "consistency (pseudo-Huber)"
    else:
        teacher_taps = set(teacher_denoiser.feature_names(trainable_unet=not shares_unet))
        taps = [t for t in student.feature_names(trainable_unet=not shares_unet) if t in teacher_taps]
        if cfg.loss_weights[2] > 0 and not taps:
            raise ConfigError(f"student preset {cfg.student!r} shares no feature taps with this teacher")
        s_channels = probe_channels(student, taps, teacher)
        t_channels = probe_channels(teacher_denoiser, taps, teacher)
        channels = {t: (s_channels[t], t_channels[t]) for t in taps}
        loss = TriLevelLoss(cfg.loss_weights, channels, cfg.normalize_features).to(accelerator.device)
        used_taps = taps if cfg.loss_weights[2] > 0 else []
        module = DistillationModule(student, loss, used_taps)
        loss_repr = loss.extra_repr()
    params = [p for p in module.parameters() if p.requires_grad]
    trainable_names = [n for n, p in module.named_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    module, optimizer = accelerator.prepare(module, optimizer)
    trainable = sum(p.numel() for p in params)
    params = [p for p in module.parameters() if p.requires_grad]  # FSDP2 swaps in sharded ones

    counts = {
        "teacher_denoiser_params": count_params(teacher.unet, teacher.controlnet),
        "student_denoiser_params": count_params(student.unet, student.controlnet),
        "trainable_params": trainable,
    }
    if main:
        logger.info(
            "teacher %s → student %s: denoiser %.2f M → %.2f M params; loss %s over %d feature taps",
            cfg.teacher,
            cfg.student,
            counts["teacher_denoiser_params"] / 1e6,
            counts["student_denoiser_params"] / 1e6,
            loss_repr,
            len(used_taps),
        )
    resolved = {
        "stage1_steps": stage1_steps,
        "stage2_steps": stage2_steps,
        "resolution": size,
        "labelled_images": data.rows[0],  # None when streaming
        "unlabelled_images": data.rows[1],
        "feature_taps": used_taps,
        "world_size": accelerator.num_processes,
        **counts,
    }
    return Setup(
        teacher,
        teacher_denoiser,
        batches,
        data,
        module,
        optimizer,
        params,
        trainable_names,
        used_taps,
        stage1_steps,
        stage2_steps,
        resolved,
        init_report,
        target,
        solver,
    )


def fits_latent_cache(setup: Setup) -> bool:
    """Whether the latents of every training image fit `LATENT_CACHE_BYTES` (never when streaming)."""
    labelled, unlabelled = setup.data.rows
    if labelled is None or unlabelled is None:
        return False
    teacher = setup.teacher
    latent = teacher.vae.config.latent_channels * (setup.batches.size // teacher.vae_scale_factor) ** 2
    return (labelled + unlabelled) * latent * 4 <= LATENT_CACHE_BYTES
