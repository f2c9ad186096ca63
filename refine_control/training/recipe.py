"""The default recipe (`--recipe fast`) as stages of one run: the compact student, then its few-step student, then
a tiny VAE decoder when decoding dominates the few-step image.

Each stage is an ordinary run dir under `RUN/stages/<stage>/` (config, checkpoints, logs, student), made by the same
code as `refine-distill --from RUN --few-step` / `--tiny-decoder`, so each resumes bit for bit from its own
checkpoints. `RUN/student` is a copy of the last stage's student and `RUN/recipe.json` records the stages and the
tiny-decoder decision. `--resume` skips the finished stages and continues the interrupted one; a kill at any point
loses nothing already saved (students and checkpoints are written atomically).

The tiny-decoder rule is counted, not timed, so every run of the same recipe decides the same way: the stage is
added when it makes the few-step image (text encoder + steps × denoiser + decode) at least
`TINY_DECODER_MIN_GAIN` times cheaper in MACs. The threshold is 2, not lower, because MACs flatter the tiny decoder:
on the built-in teacher it cuts the few-step image's MACs 1.5× (decode 61% of them), yet the committed timing
(results/latency/builtin-few-step.json) shows no speed-up in ONNX Runtime FP32. At SD1.5 size, where the VAE
decoder is most of the image, the rule adds it.
"""

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env

from refine_control.atomic import atomic_dir, write_json
from refine_control.errors import ConfigError
from refine_control.training.config import DistillConfig, with_run_settings
from refine_control.training.run_dir import is_finished, prepare_run_dir

logger = logging.getLogger(__name__)

STAGES_DIR = "stages"
RECIPE_FILE = "recipe.json"
TINY_DECODER_MIN_GAIN = 2.0


def stage_dir(run: Path, stage: str) -> Path:
    return run / STAGES_DIR / stage


def _continue(path: Path) -> dict[str, bool]:
    """A stage dir that exists is resumed (from its checkpoint, or restarted if it has none)."""
    return {"resume": path.is_dir() and any(path.iterdir()), "overwrite": False}


def compact_config(cfg: DistillConfig) -> DistillConfig:
    """Stage 1 (+ stage 2 with unlabelled images): the compact student, sampled with guidance pairs."""
    path = stage_dir(cfg.output_dir, "compact")
    return dataclasses.replace(cfg, output_dir=path, recipe="guided", sampling_steps=None, **_continue(path))


def few_step_config(cfg: DistillConfig) -> DistillConfig:
    """Latent consistency distillation of the compact student (guidance scale as an input)."""
    path = stage_dir(cfg.output_dir, "few-step")
    keep = (
        "batch_size", "grad_accum", "mixed_precision", "num_workers", "checkpoint_every", "keep_checkpoints",
        "log_every", "seed", "allow_pickle_weights", "guidance_range", "solver_steps", "target_decay",
        "sampling_steps", "sampling_guidance", "sampling_first_timestep", "warmup_steps", "lr_schedule",
        "weight_decay", "max_grad_norm", "streaming", "caption_column", "image_column", "shuffle_buffer", "validate",
        "max_bad_fraction", "builtin_labelled", "scale",
    )  # fmt: skip
    few = DistillConfig(
        output_dir=path,
        recipe="guided",
        from_run=str(stage_dir(cfg.output_dir, "compact")),
        few_step=True,
        max_steps=cfg.few_step_steps,
        **{k: getattr(cfg, k) for k in keep},
        **_continue(path),
    )
    return with_run_settings(few)


def tiny_decoder_config(cfg: DistillConfig) -> DistillConfig:
    path = stage_dir(cfg.output_dir, "tiny-decoder")
    keep = (
        "seed", "allow_pickle_weights", "tiny_decoder_width", "batch_size", "builtin_labelled", "num_workers", "scale",
    )  # fmt: skip
    tiny = DistillConfig(
        output_dir=path,
        recipe="guided",
        from_run=str(stage_dir(cfg.output_dir, "few-step")),
        tiny_decoder=True,
        **{k: getattr(cfg, k) for k in keep},
        **_continue(path),
    )
    return with_run_settings(tiny)


def tiny_decoder_decision(cfg: DistillConfig, few_step_run: Path) -> dict[str, Any]:
    """Whether the tiny-decoder stage pays, from MACs of the few-step image with the teacher's and a tiny decoder."""
    from refine_control.models.cost import decoder_macs, denoiser_macs, text_encoder_macs
    from refine_control.models.pipeline_dir import read_recommendation
    from refine_control.models.teacher import load_teacher
    from refine_control.training.run_dir import load_run_student
    from refine_control.training.tiny_decoder import build_tiny_vae

    teacher = load_teacher(
        cfg.teacher, cfg.controlnet, torch.float32, torch.device("cpu"), teacher_config=cfg.teacher_config
    )
    student = load_run_student(few_step_run, torch.device("cpu"))
    size = cfg.resolution or teacher.resolution
    steps = read_recommendation(few_step_run / "student").steps
    text = text_encoder_macs(teacher.text_encoder)
    step = denoiser_macs(student.unet, student.controlnet, size, teacher.vae_scale_factor)
    decode = decoder_macs(teacher.vae, size)
    tiny = decoder_macs(build_tiny_vae(teacher.vae, cfg.tiny_decoder_width), size)
    image = text + steps * step + decode
    gain = image / (image - decode + tiny)
    chosen = {"auto": gain >= TINY_DECODER_MIN_GAIN, "always": True, "never": False}[cfg.tiny_decoder_stage]
    return {
        "rule": f"add the tiny decoder when it makes the few-step image >= {TINY_DECODER_MIN_GAIN:g}x cheaper in MACs",
        "policy": cfg.tiny_decoder_stage,
        "image_size": size,
        "steps": steps,
        "macs": {"text_encoder": text, "denoiser_step": step, "vae_decode": decode, "tiny_decode": tiny},
        "decode_share": decode / image,
        "gain": gain,
        "added": bool(chosen),
    }


def run_recipe(cfg: DistillConfig) -> Path:
    """Run (or resume) the fast recipe's stages in `cfg.output_dir`; return the run dir."""
    run, state = cfg.output_dir, PartialState()
    if parse_flag_from_env("ACCELERATE_USE_FSDP"):
        raise ConfigError(
            "the fast recipe's few-step stage is not supported under FSDP (its target network is a whole copy)",
            hint="pass --recipe guided for the compact student alone, or launch DDP (`accelerate launch --multi_gpu`)",
        )
    if state.is_main_process:
        prepare_run_dir(cfg, state.num_processes)
    state.wait_for_everyone()
    from refine_control.training.trainer import train

    seconds: dict[str, float] = {}  # spent on each stage by this invocation (0 for one finished before)
    compact = compact_config(cfg)
    seconds["compact"] = _run_stage("compact", compact, train)
    few = few_step_config(cfg)  # reads the compact stage's finished run
    seconds["few-step"] = _run_stage("few-step", few, train)
    decision = tiny_decoder_decision(cfg, few.output_dir)
    logger.info(
        "tiny decoder: %s (decode %.0f%% of the few-step image's MACs; a tiny decoder would cut them %.2fx)",
        "added" if decision["added"] else "not added",
        100 * decision["decode_share"],
        decision["gain"],
    )
    final = few
    if decision["added"]:
        final = tiny_decoder_config(cfg)
        seconds["tiny-decoder"] = _run_stage("tiny-decoder", final, train)
    if state.is_main_process:
        names = ["compact", "few-step", *(["tiny-decoder"] if decision["added"] else [])]
        write_json(
            run / RECIPE_FILE, {"recipe": cfg.recipe, "stages": names, "final": names[-1], "tiny_decoder": decision}
        )
        _finish(cfg, compact.output_dir, final.output_dir, names, seconds)
    state.wait_for_everyone()
    return run


def _run_stage(name: str, stage_cfg: DistillConfig, train: Any) -> float:
    """Train one stage unless it finished before; return the seconds spent on it."""
    if is_finished(stage_cfg.output_dir):
        logger.info("stage %s: finished already (%s)", name, stage_cfg.output_dir)
        return 0.0
    logger.info("stage %s → %s", name, stage_cfg.output_dir)
    start = time.perf_counter()
    train(stage_cfg)
    return time.perf_counter() - start


def _finish(cfg: DistillConfig, compact: Path, final: Path, names: list[str], seconds: dict[str, float]) -> None:
    """RUN/config.json with the compact stage's resolved facts, RUN/metrics.json gathering each stage's summary,
    and last (it marks the run finished) RUN/student, a copy of the last stage's."""
    run = cfg.output_dir
    resolved = json.loads((compact / "config.json").read_text()).get("resolved", {})
    write_json(run / "config.json", {**cfg.to_json(), "resolved": resolved})
    metrics = {
        name: json.loads((stage_dir(run, name) / "metrics.json").read_text())
        for name in names
        if (stage_dir(run, name) / "metrics.json").is_file()
    }
    summary = {"recipe": cfg.recipe, "final_stage": names[-1], "stages": metrics, "seconds": seconds}
    write_json(run / "metrics.json", summary)
    with atomic_dir(run / "student") as tmp:
        shutil.copytree(final / "student", tmp, dirs_exist_ok=True)
    logger.info("recipe finished: %s (the %s stage's student)", run / "student", names[-1])
