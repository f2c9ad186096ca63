"""`train(cfg)`: the two-stage Refine-Control distillation loop, built on accelerate.

Stage 1 trains on labelled data (image + caption) with the tri-level loss and prompt dropout. Stage 2 continues
on unlabelled images (empty prompt; the teacher's outputs and features are the soft targets, the image itself the
task target), mixed with labelled replay at a lower learning rate. Every random draw comes from (seed, step,
micro-batch, rank), so `--resume` continues bit for bit from a checkpoint.
"""

import json
import logging
import math
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from refine_control.atomic import write_json, write_text
from refine_control.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from refine_control.config import DistillConfig
from refine_control.data import ImageRecord, epoch_index, load_image, read_image_folder
from refine_control.distiller import Conditioner, DistillationModule, probe_channels, run_teacher
from refine_control.errors import ConfigError, RefineError
from refine_control.losses import TriLevelLoss
from refine_control.models.denoiser import ControlledDenoiser
from refine_control.models.presets import STUDENT_PRESETS, build_student, count_params
from refine_control.models.teacher import Teacher, load_teacher
from refine_control.preprocess import get_preprocessor
from refine_control.run_dir import prepare_run_dir, save_student
from refine_control.weaklabel.transfer import transfer_parameters

logger = logging.getLogger(__name__)

LABELLED, UNLABELLED, REPLAY = 0, 1, 2  # data streams, each with its own seeded order


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


class Batches:
    """Deterministic batches: which records a (step, micro-batch, rank) sees is a pure function of them."""

    def __init__(self, labelled: list[ImageRecord], unlabelled: list[ImageRecord], cfg: DistillConfig, world: int):
        self.labelled, self.unlabelled, self.cfg, self.world = labelled, unlabelled, cfg, world
        self.resolution = 0
        self.preprocessor = get_preprocessor(cfg.preprocessor)

    def get(self, step: int, micro: int, rank: int, stage: int) -> tuple[np.ndarray, list[str], np.ndarray]:
        cfg = self.cfg
        rng = np.random.default_rng(_seed(cfg.seed, step, micro, rank, 7))
        slot = (step * cfg.grad_accum + micro) * self.world + rank
        if stage == 1:
            parts = [(LABELLED, self.labelled, cfg.batch_size)]
        else:
            n_replay = round(cfg.batch_size * cfg.replay_ratio)
            parts = [(UNLABELLED, self.unlabelled, cfg.batch_size - n_replay), (REPLAY, self.labelled, n_replay)]
        images, captions = [], []
        for stream, records, count in parts:
            for j in range(count):
                record = records[epoch_index(slot * count + j, len(records), _seed(cfg.seed, stream))]
                images.append(load_image(record.path, self.resolution))
                caption = "" if stream == UNLABELLED else (record.text or "")
                captions.append("" if rng.random() < cfg.prompt_dropout else caption)
        controls = np.stack([self.preprocessor(image, rng) for image in images])
        return np.stack(images), captions, controls


def _builtin_data(cfg: DistillConfig, run: Path) -> tuple[Path, Path | None]:
    from refine_control.builtin.shapes import write_image_folder  # noqa: PLC0415 - only for the builtin teacher

    data = run / "data"
    labelled = data / "labelled"
    if not (labelled / "metadata.jsonl").is_file():
        write_image_folder(labelled, "train", cfg.builtin_labelled, cfg.seed, captions=True)
    unlabelled = None
    if cfg.builtin_unlabelled > 0:
        unlabelled = data / "unlabelled"
        if not (unlabelled / "metadata.jsonl").is_file():
            write_image_folder(unlabelled, "unlabelled", cfg.builtin_unlabelled, cfg.seed, captions=False)
    return labelled, unlabelled


def _load_data(cfg: DistillConfig, run: Path) -> tuple[list[ImageRecord], list[ImageRecord]]:
    labelled_dir, unlabelled_dir = cfg.labelled, cfg.unlabelled
    if cfg.teacher == "builtin" and labelled_dir is None:
        labelled_path, unlabelled_path = _builtin_data(cfg, run)
        labelled_dir = str(labelled_path)
        unlabelled_dir = unlabelled_dir or (str(unlabelled_path) if unlabelled_path else None)
    assert labelled_dir is not None  # checked by DistillConfig
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
    stage2 = cfg.stage2_steps if cfg.stage2_steps is not None else (cfg.max_steps // 2 if unlabelled else 0)
    if stage2 > 0 and not unlabelled:
        raise ConfigError(
            f"`--stage2-steps {stage2}` needs unlabelled images, but none were found",
            hint="pass --unlabelled DIR (images without captions) or --stage2-steps 0",
        )
    if cfg.max_steps + stage2 == 0:
        raise ConfigError("nothing to train: `--max-steps` and `--stage2-steps` are both 0")
    return cfg.max_steps, stage2


def _learning_rate(cfg: DistillConfig, step: int, stage1_steps: int) -> float:
    in_stage = step if step < stage1_steps else step - stage1_steps
    scale = 1.0 if step < stage1_steps else cfg.stage2_lr_scale
    warmup = min(1.0, (in_stage + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    return cfg.learning_rate * scale * warmup


def _initialise(cfg: DistillConfig, teacher: Teacher, student: ControlledDenoiser, shares_unet: bool) -> dict[str, Any]:
    if cfg.init == "random":
        return {"init": "random"}
    reports = {"controlnet": transfer_parameters(teacher.controlnet, student.controlnet)}
    if not shares_unet:
        reports["unet"] = transfer_parameters(teacher.unet, student.unet)
    for name, report in reports.items():
        logger.info("init transfer, %s: %s", name, report.summary())
    return {"init": "transfer", **{name: report.to_dict() for name, report in reports.items()}}


def train(cfg: DistillConfig) -> Path:
    """Distil the teacher into the preset student; return the run dir (its `student/` is the result)."""
    run = cfg.output_dir
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.grad_accum, cpu=not torch.cuda.is_available()
    )
    main = accelerator.is_main_process
    if main:
        prepare_run_dir(cfg)
    accelerator.wait_for_everyone()
    weight_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.mixed_precision, torch.float32)

    # 1. Teacher: frozen, in the trainer's dtype and on its device.
    teacher = load_teacher(cfg.teacher, cfg.controlnet, weight_dtype, accelerator.device)
    teacher_denoiser = ControlledDenoiser(teacher.unet, teacher.controlnet)

    # 2. Data (materialised shapes for the builtin teacher), checked before any training.
    if main:
        labelled, unlabelled = _load_data(cfg, run)
    accelerator.wait_for_everyone()
    if not main:
        labelled, unlabelled = _load_data(cfg, run)
    stage1_steps, stage2_steps = _stage_steps(cfg, unlabelled)
    total_steps = stage1_steps + stage2_steps
    batches = Batches(labelled, unlabelled, cfg, accelerator.num_processes)
    batches.resolution = cfg.resolution or teacher.resolution
    if batches.resolution % (teacher.vae_scale_factor * 2 ** (len(teacher.unet.config.block_out_channels) - 1)):
        raise ConfigError(f"`--resolution` {batches.resolution} does not divide into this teacher's latent grid")

    # 3. Student: a preset built from the teacher's configs; the shared UNet (if any) stays frozen.
    preset = STUDENT_PRESETS.get(cfg.student)
    torch.manual_seed(cfg.seed)
    student_unet, student_controlnet = build_student(teacher.unet, teacher.controlnet, preset)
    student = ControlledDenoiser(student_unet, student_controlnet).to(accelerator.device)
    shares_unet = student_unet is teacher.unet
    init_report = _initialise(cfg, teacher, student, shares_unet)
    student.controlnet.train().requires_grad_(True)
    if not shares_unet:
        student.unet.train().requires_grad_(True)

    # 4. Loss: feature taps present in both models, with student→teacher projectors.
    student_taps = student.feature_names(trainable_unet=not shares_unet)
    teacher_taps = set(teacher_denoiser.feature_names(trainable_unet=not shares_unet))
    taps = [t for t in student_taps if t in teacher_taps]
    if cfg.loss_weights[2] > 0 and not taps:
        raise ConfigError(f"student preset {cfg.student!r} shares no feature taps with this teacher")
    s_channels = probe_channels(student, taps, teacher)
    t_channels = probe_channels(teacher_denoiser, taps, teacher)
    channels = {t: (s_channels[t], t_channels[t]) for t in taps}
    loss = TriLevelLoss(cfg.loss_weights, channels, cfg.normalize_features).to(accelerator.device)
    module = DistillationModule(student, loss, taps if cfg.loss_weights[2] > 0 else [])
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    module, optimizer = accelerator.prepare(module, optimizer)
    trainable_names = [n for n, p in accelerator.unwrap_model(module).named_parameters() if p.requires_grad]
    ema = None
    if cfg.ema_decay is not None:
        ema = {n: p.detach().clone() for n, p in accelerator.unwrap_model(module).student.named_parameters() if p.requires_grad}

    # 5. Resume from the newest complete checkpoint.
    start = 0
    checkpoints = list_checkpoints(run / "checkpoints")
    if cfg.resume and checkpoints:
        state = load_checkpoint(checkpoints[-1])
        unwrapped = accelerator.unwrap_model(module)
        named = dict(unwrapped.named_parameters())
        if set(state["trainable"]) != set(trainable_names):
            raise RefineError(f"checkpoint {checkpoints[-1]} does not match this student; start over with --overwrite")
        with torch.no_grad():
            for name, value in state["trainable"].items():
                named[name].copy_(value)
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None and state["ema"] is not None:
            ema = {k: v.to(accelerator.device) for k, v in state["ema"].items()}
        start = int(state["state"]["step"])
        logger.info("resumed from %s at step %d", checkpoints[-1], start)

    counts = {
        "teacher_denoiser_params": count_params(teacher.unet, teacher.controlnet),
        "student_denoiser_params": count_params(student.unet, student.controlnet),
        "trainable_params": sum(p.numel() for p in params),
    }
    if main:
        logger.info(
            "teacher %s → student %s: denoiser %.2f M → %.2f M params (%d feature taps, loss %s)",
            cfg.teacher, cfg.student, counts["teacher_denoiser_params"] / 1e6, counts["student_denoiser_params"] / 1e6,
            len(taps), accelerator.unwrap_model(module).loss.extra_repr(),
        )
        write_json(run / "config.json", {**cfg.to_json(), "resolved": {
            "stage1_steps": stage1_steps, "stage2_steps": stage2_steps, "resolution": batches.resolution,
            "labelled_images": len(labelled), "unlabelled_images": len(unlabelled), "feature_taps": taps,
            "world_size": accelerator.num_processes, **counts,
        }})
        write_json(run / "init_report.json", init_report)
        _truncate_metrics(run / "metrics.jsonl", start)

    # 6. The loop.
    conditioner = Conditioner(teacher, accelerator.device, weight_dtype)
    needs_teacher = loss.needs_teacher
    module_taps = taps if cfg.loss_weights[2] > 0 else []
    step_times: list[float] = []
    progress = tqdm(range(start, total_steps), initial=start, total=total_steps, disable=not main, desc="distilling")
    metrics_file = (run / "metrics.jsonl").open("a") if main else None
    try:
        for step in progress:
            stage = 1 if step < stage1_steps else 2
            lr = _learning_rate(cfg, step, stage1_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            tic = time.perf_counter()
            terms_sum: dict[str, float] = {}
            for micro in range(cfg.grad_accum):
                generator = torch.Generator().manual_seed(_seed(cfg.seed, step, micro, accelerator.process_index))
                images, captions, controls = batches.get(step, micro, accelerator.process_index, stage)
                inputs = conditioner.make_inputs(images, captions, controls, generator)
                with accelerator.accumulate(module):
                    teacher_out = None
                    if needs_teacher:
                        with accelerator.autocast():
                            teacher_out = run_teacher(teacher_denoiser, inputs, module_taps)
                    out = module(inputs, teacher_out)
                    if not torch.isfinite(out.total):
                        values = {k: float(v) for k, v in out.terms.items()}
                        raise RefineError(
                            f"the loss became {float(out.total)} at step {step} ({values})",
                            hint="lower --learning-rate, or use --mixed-precision no",
                        )
                    accelerator.backward(out.total)
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                for name, value in out.terms.items():
                    terms_sum[name] = terms_sum.get(name, 0.0) + float(value) / cfg.grad_accum
            if ema is not None:
                with torch.no_grad():
                    for name, p in accelerator.unwrap_model(module).student.named_parameters():
                        if name in ema:
                            ema[name].lerp_(p.detach(), 1.0 - cfg.ema_decay)
            step_times.append(time.perf_counter() - tic)
            done = step + 1
            progress.set_postfix({k: f"{v:.4f}" for k, v in terms_sum.items()} | {"stage": stage})
            if main and (done % cfg.log_every == 0 or done == total_steps):
                row = {"step": done, "stage": stage, "lr": lr, "sec_per_step": step_times[-1], **terms_sum}
                metrics_file.write(json.dumps(row) + "\n")
                metrics_file.flush()
            if done % cfg.checkpoint_every == 0 and done < total_steps:
                accelerator.wait_for_everyone()
                if main:
                    unwrapped = accelerator.unwrap_model(module)
                    named = dict(unwrapped.named_parameters())
                    save_checkpoint(
                        run / "checkpoints", done, {n: named[n] for n in trainable_names}, optimizer.state_dict(),
                        ema, {"stage": stage, "config": cfg.to_json()}, cfg.keep_checkpoints,
                    )
    finally:
        if metrics_file is not None:
            metrics_file.close()

    # 7. The deployable student: a full pipeline dir (projectors are not part of it).
    accelerator.wait_for_everyone()
    in_sync = _replicas_in_sync(accelerator, params)
    if main:
        final = accelerator.unwrap_model(module).student
        if ema is not None:
            with torch.no_grad():
                for name, p in final.named_parameters():
                    if name in ema:
                        p.copy_(ema[name])
        save_student(run / "student", teacher, final)
        summary = {
            "steps": {"stage1": stage1_steps, "stage2": stage2_steps, "resumed_from": start},
            "sec_per_step_median": statistics.median(step_times) if step_times else None,
            "final_terms": _last_terms(run / "metrics.jsonl"),
            "world_size": accelerator.num_processes,
            "replicas_in_sync": in_sync,
            **counts,
        }
        write_json(run / "metrics.json", summary)
    accelerator.end_training()
    return run


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
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    if not rows:
        return {}
    tail = rows[-max(1, math.ceil(len(rows) / 10)) :]
    keys = [k for k in tail[-1] if k in ("task", "output", "feature")]
    return {k: statistics.fmean(r[k] for r in tail if k in r) for k in keys}
