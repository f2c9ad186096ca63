"""`train(cfg)`: the two-stage Refine-Control distillation loop, built on accelerate.

Stage 1 trains on labelled data (image + caption) with the tri-level loss and prompt dropout. Stage 2 continues
on unlabelled images (empty prompt; the teacher's outputs and features are the soft targets, the image itself the
task target), mixed with labelled replay at a lower learning rate. Every random draw comes from (seed, step,
micro-batch, rank) or, for a sample's own draws, from (seed, step, its index in the step's batch), so `--resume`
continues bit for bit from a checkpoint and `--grad-accum` only changes how a step's batch is split.
"""

import contextlib
import json
import logging
import math
import os
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin, parse_flag_from_env
from diffusers.training_utils import EMAModel

from refine_control.atomic import write_json
from refine_control.data.bad_data import BadDataPolicy
from refine_control.data.batches import UNLABELLED, MicroBatch
from refine_control.data.folders import derive_seed
from refine_control.data.loader import micro_batches
from refine_control.errors import ConfigError, RefineError
from refine_control.faults import fault_point
from refine_control.models.presets import STUDENT_PRESETS
from refine_control.progress import progress_bar
from refine_control.training.checkpoint import gather_state, list_checkpoints, restore_checkpoint, save_checkpoint
from refine_control.training.config import DistillConfig
from refine_control.training.consistency import consistency_batch
from refine_control.training.distiller import Conditioner, run_teacher
from refine_control.training.run_dir import last_terms, prepare_run_dir, save_student, truncate_metrics, unsharded
from refine_control.training.setup import Setup, build_setup, fits_latent_cache

logger = logging.getLogger(__name__)
# The hint when FSDP cannot be used.
_DDP = "or launch DDP (`accelerate launch --multi_gpu ...`): the student is small enough to replicate"


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


def _train_step(
    cfg: DistillConfig,
    setup: Setup,
    accelerator: Accelerator,
    conditioner: Conditioner,
    step: int,
    feed: Iterator[MicroBatch],
    bad_data: BadDataPolicy,
) -> dict[str, float]:
    """One optimizer step (over `grad_accum` micro-batches from `feed`); returns the mean of each loss term."""
    module, rank = setup.module, accelerator.process_index
    terms: dict[str, float] = {}
    for micro in range(cfg.grad_accum):
        batch = next(feed)
        assert (batch.step, batch.micro) == (step, micro), (batch.step, batch.micro, step, micro)
        bad_data.update(batch.drawn, batch.bad)
        images, captions, controls, keys, seeds = batch.images, batch.captions, batch.controls, batch.keys, batch.seeds
        generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        if setup.solver is not None:  # the few-step stage
            generator = torch.Generator().manual_seed(derive_seed(cfg.seed, step, micro, rank))
            latents, text, control = conditioner.encode(images, captions, controls, keys)
            with accelerator.autocast():
                targets = consistency_batch(
                    setup.teacher_denoiser, setup.target, setup.solver, conditioner.prediction_type, latents, text,
                    conditioner.encode_text([""])[0], control, cfg.guidance_range, generator,
                )  # fmt: skip
        else:
            inputs = conditioner.make_inputs(images, captions, controls, generators, keys)
        with accelerator.accumulate(module):
            if setup.solver is not None:
                out = module(targets)
            else:
                teacher_out, teacher_samples = None, None
                if cfg.uses_teacher_signals:
                    with accelerator.autocast():
                        teacher_out = run_teacher(setup.teacher_denoiser, inputs, setup.taps)
                if cfg.unlabelled_loss == "task":  # the control arm: no teacher targets for unlabelled samples
                    teacher_samples = torch.tensor(
                        [s != UNLABELLED for s in batch.streams], device=inputs.sample.device
                    )
                out = module(inputs, teacher_out, teacher_samples)
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
    """Distil the teacher into the preset student; return the run dir (its `student/` is the result).

    The fast recipe runs as stages of one run (refine_control/training/recipe.py), each stage through this function."""
    if cfg.recipe == "fast" and cfg.from_run is None:
        from refine_control.training.recipe import run_recipe

        return run_recipe(cfg)
    run = cfg.output_dir
    fsdp = parse_flag_from_env("ACCELERATE_USE_FSDP")
    if fsdp and os.environ.get("FSDP_VERSION", "1") != "2":
        # FSDP1 flattens parameters into per-process buffers; checkpoints and the EMA are written for FSDP2's
        # per-parameter shards (DTensor), which `refine_control.training.checkpoint` gathers and cuts back.
        raise ConfigError("FSDP version 1 is not supported", hint=f"launch with `--fsdp_version 2`, {_DDP}")
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.grad_accum,
        cpu=not torch.cuda.is_available(),
    )
    main = accelerator.is_main_process
    if fsdp:
        _check_fsdp(cfg)
        _fsdp_on_cpu(accelerator, cfg.mixed_precision)
    if main:
        prepare_run_dir(cfg, accelerator.num_processes)
    accelerator.wait_for_everyone()
    with _run_log(run, main):
        if cfg.tiny_decoder:
            if main:  # minutes on one process; the others wait
                from refine_control.training.tiny_decoder import train_tiny_decoder

                train_tiny_decoder(cfg, accelerator.device)
            accelerator.wait_for_everyone()
        else:
            _distil(cfg, accelerator)
    accelerator.end_training()
    return run


def _fsdp_on_cpu(accelerator: Accelerator, mixed_precision: str) -> None:
    """Honour `accelerate launch --use_fsdp` on CPU processes (gloo). accelerate 1.15 turns FSDP on only for GPU-type
    backends and would quietly run DDP instead; torch's FSDP2 runs on gloo, so it is turned on here with the
    launcher's FSDP settings (this is how the 2-process FSDP tests run on a CPU machine)."""
    if accelerator.distributed_type != DistributedType.MULTI_CPU:
        return
    plugin = FullyShardedDataParallelPlugin()  # reads the launcher's FSDP_* environment
    if mixed_precision != "no":
        plugin.set_mixed_precision(mixed_precision)
    accelerator.state.fsdp_plugin = plugin
    # AcceleratorState re-reads the process-wide PartialState whenever it is built again, so set it in both.
    PartialState().distributed_type = accelerator.state.distributed_type = DistributedType.FSDP


def _check_fsdp(cfg: DistillConfig) -> None:
    """FSDP shards a student that owns all its weights, and nothing else needs them whole during training."""
    if cfg.few_step:
        raise ConfigError("--few-step is not supported under FSDP: its target network is a whole copy", hint=_DDP)
    if cfg.from_run is None and not STUDENT_PRESETS.get(cfg.student).shrink_unet:
        raise ConfigError(
            f"student {cfg.student!r} is not supported under FSDP: it shares the teacher's UNet, which the teacher "
            "must run whole",
            hint=f"choose a compact-* student, {_DDP}",
        )


def _make_ema(cfg: DistillConfig, params: list[torch.nn.Parameter]) -> EMAModel | None:
    """The average of the student's trainable weights, when one is kept.

    The few-step target network follows the student with the constant decay `--target-decay` (`min_decay` =
    `decay`); `--ema-decay` keeps diffusers' default warm-up, decay min(`--ema-decay`, (1 + t) / (10 + t)) at
    update t. The first update copies the student's weights in both."""
    if cfg.few_step:
        return EMAModel(params, decay=cfg.target_decay, min_decay=cfg.target_decay)
    return EMAModel(params, decay=cfg.ema_decay) if cfg.ema_decay is not None else None


def _distil(cfg: DistillConfig, accelerator: Accelerator) -> None:
    run, main = cfg.output_dir, accelerator.is_main_process
    sharded = accelerator.distributed_type == DistributedType.FSDP  # gathering the weights takes every process
    weight_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.mixed_precision, torch.float32)
    setup = build_setup(cfg, accelerator, weight_dtype)
    student = accelerator.unwrap_model(setup.module).student
    averaged = {n: p for n, p in student.named_parameters() if p.requires_grad}
    ema_names, ema_params = list(averaged), list(averaged.values())
    ema = _make_ema(cfg, ema_params)
    # The few-step target network holds the average: it is what `consistency_batch` reads.
    target_params = None
    if setup.target is not None:
        target_named = dict(setup.target.named_parameters())
        target_params = [target_named[n] for n in ema_names]

    # 5. Resume from the newest complete checkpoint.
    checkpoints = list_checkpoints(run / "checkpoints")
    start = 0
    if cfg.resume and checkpoints:
        named = dict(accelerator.unwrap_model(setup.module).named_parameters())
        trainable = {n: named[n] for n in setup.trainable_names}
        start = restore_checkpoint(checkpoints[-1], trainable, setup.optimizer, ema, ema_names)
        if ema is not None and target_params is not None:
            ema.copy_to(target_params)
    if main:
        write_json(run / "config.json", {**cfg.to_json(), "resolved": setup.resolved})
        write_json(run / "init_report.json", setup.init_report)
        truncate_metrics(run / "metrics.jsonl", start)

    # 6. The loop.
    conditioner = Conditioner(setup.teacher, accelerator.device, weight_dtype, fits_latent_cache(setup), cfg.snr_gamma)
    total = setup.stage1_steps + setup.stage2_steps
    feed = micro_batches(setup.batches, start, total, cfg.grad_accum, accelerator.process_index, cfg.num_workers)
    rows = setup.data.rows
    known = None if rows[0] is None or rows[1] is None else rows[0] + rows[1]
    bad_data = BadDataPolicy(run / "logs", accelerator.process_index, cfg.max_bad_fraction, known)
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
            terms = _train_step(cfg, setup, accelerator, conditioner, step, feed, bad_data)
            if ema is not None:
                ema.step(ema_params)
                if target_params is not None:
                    ema.copy_to(target_params)
            step_times.append(time.perf_counter() - tic)
            done = step + 1
            progress.set_postfix({k: f"{v:.4f}" for k, v in terms.items()} | {"stage": stage}, refresh=False)
            if metrics is not None and (done % cfg.log_every == 0 or done == total):
                row = {"step": done, "stage": stage, "lr": lr, "sec_per_step": step_times[-1], **terms}
                metrics.write(json.dumps(row) + "\n")
                metrics.flush()
            if done % cfg.checkpoint_every == 0 and done < total:
                accelerator.wait_for_everyone()
                if main or sharded:
                    named = dict(accelerator.unwrap_model(setup.module).named_parameters())
                    trainable = {n: named[n] for n in setup.trainable_names}
                    state = gather_state(trainable, setup.optimizer, ema, ema_names)
                if main:
                    extra = {"stage": stage, "config": cfg.to_json()}
                    save_checkpoint(run / "checkpoints", done, state, extra, cfg.keep_checkpoints)
                    fault_point(f"checkpoint:{run.name}:{done}")  # crash tests (refine_control/faults.py)

    # 7. The deployable student: a full pipeline dir (the projectors are not part of it).
    accelerator.wait_for_everyone()
    in_sync = None if sharded else _replicas_in_sync(accelerator, setup.params)  # FSDP keeps one (sharded) copy
    if ema is not None and target_params is None:
        ema.copy_to(ema_params)
    whole_student = unsharded(student)  # under FSDP every process takes part
    if main:
        save_student(run / "student", setup.teacher, whole_student, cfg.sampling)
        write_json(
            run / "metrics.json",
            {
                "steps": {"stage1": setup.stage1_steps, "stage2": setup.stage2_steps, "resumed_from": start},
                "sec_per_step_median": statistics.median(step_times) if step_times else None,
                "final_terms": last_terms(run / "metrics.jsonl"),
                "world_size": accelerator.num_processes,
                "replicas_in_sync": in_sync,
                **{
                    k: setup.resolved[k]
                    for k in ("teacher_denoiser_params", "student_denoiser_params", "trainable_params")
                },
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
