"""`train(cfg)`: the two-stage Refine-Control distillation loop, built on accelerate.

Stage 1 trains on labelled data (image + caption) with the tri-level loss and prompt dropout. Stage 2 continues
on unlabelled images (empty prompt; the teacher's outputs and features are the soft targets, the image itself the
task target), mixed with labelled replay at a lower learning rate. Every random draw comes from (seed, step,
micro-batch, rank), so `--resume` continues bit for bit from a checkpoint.
"""

import contextlib
import copy
import json
import logging
import math
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator

from refine_control.atomic import write_json, write_text
from refine_control.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from refine_control.config import DistillConfig
from refine_control.consistency import ConsistencyDistillation, DDIMSolver, consistency_batch
from refine_control.data import ImageRecord, epoch_index, load_image, read_image_folder
from refine_control.distiller import Conditioner, DistillationModule, probe_channels, run_teacher
from refine_control.errors import CheckpointError, ConfigError, RefineError
from refine_control.losses import TriLevelLoss
from refine_control.models.denoiser import ControlledDenoiser, with_guidance_input
from refine_control.models.initialise import initialise_student
from refine_control.models.presets import STUDENT_PRESETS, build_student, count_params
from refine_control.models.teacher import Teacher, load_teacher
from refine_control.preprocess import get_preprocessor
from refine_control.progress import progress_bar
from refine_control.run_dir import SAMPLING_FILE, prepare_run_dir, save_student

logger = logging.getLogger(__name__)

LABELLED, UNLABELLED, REPLAY = 0, 1, 2  # data streams, each with its own seeded order
LATENT_CACHE_BYTES = 1 << 30  # the latents of the training images are kept in memory up to this size


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


class Batches:
    """Deterministic batches: which records a (step, micro-batch, rank) sees is a pure function of them."""

    def __init__(
        self, labelled: list[ImageRecord], unlabelled: list[ImageRecord], cfg: DistillConfig, world: int, size: int
    ) -> None:
        self.labelled, self.unlabelled, self.cfg, self.world, self.size = labelled, unlabelled, cfg, world, size
        self.preprocessor = get_preprocessor(cfg.preprocessor)

    def get(self, step: int, micro: int, rank: int, stage: int) -> tuple[np.ndarray, list[str], np.ndarray, list[str]]:
        """images (B, H, W, 3) uint8, captions, controls (B, H, W, 3) float32, and the image paths (cache keys)."""
        cfg = self.cfg
        rng = np.random.default_rng(_seed(cfg.seed, step, micro, rank, 7))
        slot = (step * cfg.grad_accum + micro) * self.world + rank
        if stage == 1:
            parts = [(LABELLED, self.labelled, cfg.batch_size)]
        else:
            n_replay = round(cfg.batch_size * cfg.replay_ratio)
            parts = [(UNLABELLED, self.unlabelled, cfg.batch_size - n_replay), (REPLAY, self.labelled, n_replay)]
        images, captions, keys = [], [], []
        for stream, records, count in parts:
            for j in range(count):
                record = records[epoch_index(slot * count + j, len(records), _seed(cfg.seed, stream))]
                images.append(load_image(record.path, self.size))
                keys.append(str(record.path))
                caption = "" if stream == UNLABELLED else (record.text or "")
                # The few-step stage always shows the caption: its guidance input needs the conditional prediction.
                dropout = 0.0 if cfg.few_step else cfg.prompt_dropout
                captions.append("" if rng.random() < dropout else caption)
        controls = np.stack([self.preprocessor(image, rng) for image in images])
        return np.stack(images), captions, controls, keys


def _builtin_data(cfg: DistillConfig, run: Path) -> tuple[Path, Path | None]:
    from refine_control.builtin.shapes import write_image_folder

    labelled = run / "data" / "labelled"
    if not (labelled / "metadata.jsonl").is_file():
        write_image_folder(labelled, "train", cfg.builtin_labelled, cfg.seed, captions=True)
    if cfg.builtin_unlabelled == 0:
        return labelled, None
    unlabelled = run / "data" / "unlabelled"
    if not (unlabelled / "metadata.jsonl").is_file():
        write_image_folder(unlabelled, "unlabelled", cfg.builtin_unlabelled, cfg.seed, captions=False)
    return labelled, unlabelled


def _load_data(cfg: DistillConfig, run: Path) -> tuple[list[ImageRecord], list[ImageRecord]]:
    labelled_dir, unlabelled_dir = cfg.labelled, cfg.unlabelled
    if cfg.teacher == "builtin" and labelled_dir is None:
        labelled_path, unlabelled_path = _builtin_data(cfg, run)
        labelled_dir = str(labelled_path)
        if unlabelled_dir is None and unlabelled_path is not None:
            unlabelled_dir = str(unlabelled_path)
    if labelled_dir is None:
        raise ConfigError("`--labelled DIR` is required with a teacher other than builtin")
    records = read_image_folder(labelled_dir)
    labelled = [r for r in records if r.text is not None]
    unlabelled = [r for r in records if r.text is None]
    if unlabelled_dir is not None:
        unlabelled += [ImageRecord(r.path, None) for r in read_image_folder(unlabelled_dir)]
    if not labelled:
        raise ConfigError(
            f"{labelled_dir} has no captioned images (metadata.jsonl `text`)",
            hint="stage 1 needs image + caption pairs; put captions in metadata.jsonl",
        )
    return labelled, unlabelled


def _stage_steps(cfg: DistillConfig, unlabelled: list[ImageRecord]) -> tuple[int, int]:
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


def _learning_rate(cfg: DistillConfig, step: int, stage1_steps: int, stage2_steps: int) -> float:
    """Linear warm-up at the start of each stage, then constant or a cosine decay to zero over the stage; stage 2
    runs at `stage2_lr_scale` × the base rate."""
    if step < stage1_steps:
        in_stage, length, scale = step, stage1_steps, 1.0
    else:
        in_stage, length, scale = step - stage1_steps, stage2_steps, cfg.stage2_lr_scale
    warmup = min(1.0, (in_stage + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    decay = 1.0
    if cfg.lr_schedule == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * min(1.0, in_stage / max(1, length))))
    return cfg.learning_rate * scale * warmup * decay


@dataclass
class Setup:
    """Everything built before the first step."""

    teacher: Teacher
    teacher_denoiser: ControlledDenoiser
    batches: Batches
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


def _run_student(run: Path, device: torch.device) -> ControlledDenoiser:
    """A finished run's student (UNet + ControlNet), in fp32 on `device`."""
    from diffusers import StableDiffusionControlNetPipeline

    import refine_control.models.student  # noqa: F401 - diffusers finds AsymControlNetModel through this module

    pipeline = StableDiffusionControlNetPipeline.from_pretrained(
        run / "student", torch_dtype=torch.float32, local_files_only=True, safety_checker=None,
        requires_safety_checker=False,
    )  # fmt: skip
    return ControlledDenoiser(pipeline.unet, pipeline.controlnet).to(device)


def _build(cfg: DistillConfig, accelerator: Accelerator, weight_dtype: torch.dtype) -> Setup:
    run, main = cfg.output_dir, accelerator.is_main_process
    # 1. Teacher: frozen, in the trainer's dtype and on its device.
    teacher = load_teacher(cfg.teacher, cfg.controlnet, weight_dtype, accelerator.device)
    teacher_denoiser = ControlledDenoiser(teacher.unet, teacher.controlnet)

    # 2. Data (shapes materialised once for the builtin teacher), every image checked before training.
    with accelerator.main_process_first():
        labelled, unlabelled = _load_data(cfg, run)
    stage1_steps, stage2_steps = _stage_steps(cfg, unlabelled)
    size = cfg.resolution or teacher.resolution
    grid = teacher.vae_scale_factor * 2 ** (len(teacher.unet.config.block_out_channels) - 1)
    if size % grid:
        raise ConfigError(f"`--resolution` must be a multiple of {grid} for this teacher, got {size}")
    batches = Batches(labelled, unlabelled, cfg, accelerator.num_processes, size)

    # 3. Student: a preset built from the teacher's configs (a shared UNet stays frozen), or for the few-step
    # stage a finished run's whole student, its UNet given the guidance input.
    torch.manual_seed(cfg.seed)
    if cfg.few_step:
        student = _run_student(Path(cfg.from_run), accelerator.device)
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

    counts = {
        "teacher_denoiser_params": count_params(teacher.unet, teacher.controlnet),
        "student_denoiser_params": count_params(student.unet, student.controlnet),
        "trainable_params": sum(p.numel() for p in params),
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
        "labelled_images": len(labelled),
        "unlabelled_images": len(unlabelled),
        "feature_taps": used_taps,
        "world_size": accelerator.num_processes,
        **counts,
    }
    return Setup(
        teacher,
        teacher_denoiser,
        batches,
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


class EMA:
    """Exponential moving average of the student's trainable weights (what is saved when enabled)."""

    def __init__(self, student: torch.nn.Module, decay: float, holder: torch.nn.Module | None = None) -> None:
        """With `holder` (a copy of the student, e.g. the few-step target network) the average lives in its
        parameters, so `holder` is always the averaged model."""
        self.decay = decay
        trainable = [n for n, p in student.named_parameters() if p.requires_grad]
        source = dict((holder or student).named_parameters())
        self.shadow = {n: source[n].detach() if holder else source[n].detach().clone() for n in trainable}

    @torch.no_grad()
    def update(self, student: torch.nn.Module) -> None:
        for name, p in student.named_parameters():
            if name in self.shadow:
                self.shadow[name].lerp_(p.detach(), 1.0 - self.decay)

    @torch.no_grad()
    def copy_to(self, student: torch.nn.Module) -> None:
        for name, p in student.named_parameters():
            if name in self.shadow:
                p.copy_(self.shadow[name])


def _resume(path: Path, setup: Setup, accelerator: Accelerator, ema: EMA | None) -> int:
    state = load_checkpoint(path)
    named = dict(accelerator.unwrap_model(setup.module).named_parameters())
    if set(state["trainable"]) != set(setup.trainable_names):
        raise CheckpointError(f"checkpoint {path} does not match this student", hint="start over with --overwrite")
    with torch.no_grad():
        for name, value in state["trainable"].items():
            named[name].copy_(value)
    setup.optimizer.load_state_dict(state["optimizer"])
    if ema is not None and state["ema"] is not None:
        with torch.no_grad():
            for name, value in state["ema"].items():
                ema.shadow[name].copy_(value)
    step = int(state["state"]["step"])
    logger.info("resumed from %s at step %d", path, step)
    return step


def _train_step(
    cfg: DistillConfig, setup: Setup, accelerator: Accelerator, conditioner: Conditioner, step: int, stage: int
) -> dict[str, float]:
    """One optimizer step (over `grad_accum` micro-batches); returns the mean of each loss term."""
    module, rank = setup.module, accelerator.process_index
    terms: dict[str, float] = {}
    for micro in range(cfg.grad_accum):
        generator = torch.Generator().manual_seed(_seed(cfg.seed, step, micro, rank))
        images, captions, controls, keys = setup.batches.get(step, micro, rank, stage)
        if setup.solver is not None:  # the few-step stage
            latents, text, control = conditioner.encode(images, captions, controls, keys)
            with accelerator.autocast():
                batch = consistency_batch(
                    setup.teacher_denoiser, setup.target, setup.solver, conditioner.prediction_type, latents, text,
                    conditioner.encode_text([""])[0], control, cfg.guidance_range, generator,
                )  # fmt: skip
        else:
            inputs = conditioner.make_inputs(images, captions, controls, generator, keys)
        with accelerator.accumulate(module):
            if setup.solver is not None:
                out = module(batch)
            else:
                teacher_out = None
                if cfg.uses_teacher_signals:
                    with accelerator.autocast():
                        teacher_out = run_teacher(setup.teacher_denoiser, inputs, setup.taps)
                out = module(inputs, teacher_out)
            if not torch.isfinite(out.total):
                values = {k: float(v) for k, v in out.terms.items()}
                raise RefineError(
                    f"the loss became {float(out.total)} at step {step} ({values})",
                    hint="lower --learning-rate, or use --mixed-precision no",
                )
            accelerator.backward(out.total)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(setup.params, cfg.max_grad_norm)
            setup.optimizer.step()
            setup.optimizer.zero_grad(set_to_none=True)
        for name, value in out.terms.items():
            terms[name] = terms.get(name, 0.0) + float(value) / cfg.grad_accum
    return terms


@contextlib.contextmanager
def _run_log(run: Path, enabled: bool) -> Iterator[None]:
    """Copy this package's log messages into RUN/logs/train.log."""
    if not enabled:
        yield
        return
    handler = logging.FileHandler(run / "logs" / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    package_logger = logging.getLogger("refine_control")
    package_logger.addHandler(handler)
    try:
        yield
    finally:
        package_logger.removeHandler(handler)
        handler.close()


def train(cfg: DistillConfig) -> Path:
    """Distil the teacher into the preset student; return the run dir (its `student/` is the result)."""
    run = cfg.output_dir
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.grad_accum,
        cpu=not torch.cuda.is_available(),
    )
    main = accelerator.is_main_process
    if main:
        prepare_run_dir(cfg)
    accelerator.wait_for_everyone()
    weight_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.mixed_precision, torch.float32)
    if cfg.tiny_decoder:
        with _run_log(run, main):
            if main:  # minutes on one process; the others wait
                _train_tiny_decoder(cfg, accelerator.device)
            accelerator.wait_for_everyone()
        accelerator.end_training()
        return run
    with _run_log(run, main):
        setup = _build(cfg, accelerator, weight_dtype)
        student = accelerator.unwrap_model(setup.module).student
        if setup.target is not None:  # the few-step target network is an average of the student
            ema = EMA(student, cfg.target_decay, holder=setup.target)
        else:
            ema = EMA(student, cfg.ema_decay) if cfg.ema_decay is not None else None

        # 5. Resume from the newest complete checkpoint.
        checkpoints = list_checkpoints(run / "checkpoints")
        start = _resume(checkpoints[-1], setup, accelerator, ema) if cfg.resume and checkpoints else 0
        if main:
            write_json(run / "config.json", {**cfg.to_json(), "resolved": setup.resolved})
            write_json(run / "init_report.json", setup.init_report)
            _truncate_metrics(run / "metrics.jsonl", start)

        # 6. The loop.
        conditioner = Conditioner(
            setup.teacher, accelerator.device, weight_dtype, _fits_latent_cache(setup), cfg.snr_gamma
        )
        total = setup.stage1_steps + setup.stage2_steps
        step_times: list[float] = []
        progress = progress_bar(range(start, total), initial=start, total=total, disable=not main, desc="distilling")
        with contextlib.ExitStack() as stack:
            metrics = stack.enter_context((run / "metrics.jsonl").open("a")) if main else None
            for step in progress:
                stage = 1 if step < setup.stage1_steps else 2
                lr = _learning_rate(cfg, step, setup.stage1_steps, setup.stage2_steps)
                for group in setup.optimizer.param_groups:
                    group["lr"] = lr
                tic = time.perf_counter()
                terms = _train_step(cfg, setup, accelerator, conditioner, step, stage)
                if ema is not None:
                    ema.update(student)
                step_times.append(time.perf_counter() - tic)
                done = step + 1
                progress.set_postfix({k: f"{v:.4f}" for k, v in terms.items()} | {"stage": stage}, refresh=False)
                if metrics is not None and (done % cfg.log_every == 0 or done == total):
                    row = {"step": done, "stage": stage, "lr": lr, "sec_per_step": step_times[-1], **terms}
                    metrics.write(json.dumps(row) + "\n")
                    metrics.flush()
                if done % cfg.checkpoint_every == 0 and done < total:
                    accelerator.wait_for_everyone()
                    if main:
                        named = dict(accelerator.unwrap_model(setup.module).named_parameters())
                        save_checkpoint(
                            run / "checkpoints",
                            done,
                            {n: named[n] for n in setup.trainable_names},
                            setup.optimizer.state_dict(),
                            ema.shadow if ema else None,
                            {"stage": stage, "config": cfg.to_json()},
                            cfg.keep_checkpoints,
                        )

        # 7. The deployable student: a full pipeline dir (the projectors are not part of it).
        accelerator.wait_for_everyone()
        in_sync = _replicas_in_sync(accelerator, setup.params)
        if main:
            if ema is not None and setup.target is None:
                ema.copy_to(student)
            sampling = {"steps": cfg.sampling_steps, "guidance_scale": cfg.sampling_guidance} if cfg.few_step else None
            save_student(run / "student", setup.teacher, student, sampling)
            write_json(
                run / "metrics.json",
                {
                    "steps": {"stage1": setup.stage1_steps, "stage2": setup.stage2_steps, "resumed_from": start},
                    "sec_per_step_median": statistics.median(step_times) if step_times else None,
                    "final_terms": _last_terms(run / "metrics.jsonl"),
                    "world_size": accelerator.num_processes,
                    "replicas_in_sync": in_sync,
                    **{
                        k: setup.resolved[k]
                        for k in ("teacher_denoiser_params", "student_denoiser_params", "trainable_params")
                    },
                },
            )
    accelerator.end_training()
    return run


def _fits_latent_cache(setup: Setup) -> bool:
    """Whether the latents of every training image fit `LATENT_CACHE_BYTES`."""
    batches, teacher = setup.batches, setup.teacher
    latent = teacher.vae.config.latent_channels * (batches.size // teacher.vae_scale_factor) ** 2
    images = len(batches.labelled) + len(batches.unlabelled)
    return images * latent * 4 <= LATENT_CACHE_BYTES


def _train_tiny_decoder(cfg: DistillConfig, device: torch.device) -> None:
    """`--from RUN --tiny-decoder`: the run's student with a tiny VAE distilled from the teacher's."""
    from refine_control.tiny_decoder import TinyVaeSettings, distil_tiny_vae

    run, source = cfg.output_dir, Path(cfg.from_run)
    teacher = load_teacher(cfg.teacher, cfg.controlnet, torch.float32, device)
    labelled, unlabelled = _load_data(cfg, run)
    size = cfg.resolution or teacher.resolution
    images = np.stack([load_image(r.path, size) for r in labelled + unlabelled])
    held_out = np.arange(len(images)) % 10 == 9  # every tenth image scores the decoder
    settings = TinyVaeSettings(
        cfg.tiny_decoder_width, cfg.max_steps, cfg.batch_size, cfg.learning_rate, cfg.warmup_steps
    )
    write_json(run / "config.json", {**cfg.to_json(), "resolved": {"resolution": size, "images": len(images)}})
    tiny, metrics = distil_tiny_vae(teacher.vae, images[~held_out], images[held_out], settings, cfg.seed)
    student = _run_student(source, device)
    sampling_file = source / "student" / SAMPLING_FILE
    sampling = json.loads(sampling_file.read_text()) if sampling_file.is_file() else None
    save_student(run / "student", teacher, student, sampling, vae=tiny)
    write_json(
        run / "metrics.json",
        {
            **metrics,
            "tiny_vae_params": count_params(tiny),
            "teacher_vae_params": count_params(teacher.vae),
            "held_out_images": int(held_out.sum()),
        },
    )


def _replicas_in_sync(accelerator: Accelerator, params: list[torch.nn.Parameter]) -> bool:
    """Whether every process ends with bit-identical trainable weights (gradients were synchronised)."""
    with torch.no_grad():
        flat = torch.cat([p.detach().double().flatten() for p in params])
        fingerprint = torch.stack([flat.sum(), (flat * torch.arange(1, flat.numel() + 1, dtype=flat.dtype)).sum()])
    gathered = accelerator.gather(fingerprint.to(accelerator.device).unsqueeze(0))
    same = bool((gathered == gathered[0]).all())
    if not same:
        logger.warning("the processes ended with different weights: gradients were not synchronised")
    return same


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop log rows written after the checkpoint so the log matches an uninterrupted run."""
    if not path.is_file():
        return
    rows = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    write_text(path, "".join(row + "\n" for row in rows))


def _last_terms(path: Path) -> dict[str, float]:
    """Mean of each loss term over the last 10% of logged rows."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    if not rows:
        return {}
    tail = rows[-max(1, math.ceil(len(rows) / 10)) :]
    return {k: statistics.fmean(r[k] for r in tail if k in r) for k in ("task", "output", "feature") if k in tail[-1]}
