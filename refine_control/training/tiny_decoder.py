"""A tiny VAE distilled from the teacher's, so that a few-step student's image is not mostly decoding.

diffusers' `AutoencoderTiny` (the TAESD architecture: plain convolutions, ReLU, nearest upsampling) at a small
width, trained to reproduce the teacher VAE in the teacher's own latent space: its decoder maps a latent to what the
teacher decoder makes of it, its encoder to the teacher encoder's posterior mean. It keeps the teacher's scaling
factor, so it drops into the student pipeline in place of `AutoencoderKL` and the same latents decode either way.
See madebyollin/taesd for the original and its caveat ("fudges fine details"): the PSNR of its images against the
teacher decoder's is recorded in the run's `metrics.json`. `--tiny-decoder-from DIR` takes a pretrained one instead
(TAESD itself, refine_control/models/tiny_decoder_dir.py), with its own latent scaling factor.
"""

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, AutoencoderTiny

from refine_control.atomic import write_json
from refine_control.data.folders import load_image, load_training_data
from refine_control.losses.terms import high_pass
from refine_control.models.pipeline_dir import read_recommendation
from refine_control.models.presets import count_params
from refine_control.models.teacher import load_teacher
from refine_control.models.tiny_decoder_dir import load_tiny_decoder
from refine_control.progress import progress_bar
from refine_control.runtime.sampling import GUIDED_DEFAULT
from refine_control.training.config import DistillConfig
from refine_control.training.run_dir import load_run_student, save_student

logger = logging.getLogger(__name__)

PRETRAINED_SCORED_IMAGES = 16  # images a pretrained decoder is scored on (teacher decodes at SD size are slow)


@dataclass(frozen=True)
class TinyVaeSettings:
    width: int = 32  # channels of every stage (DecoderTiny keeps one width throughout)
    steps: int = 1500
    batch_size: int = 32
    learning_rate: float = 1e-3
    warmup_steps: int = 50


def build_tiny_vae(teacher_vae: AutoencoderKL, width: int) -> AutoencoderTiny:
    """An `AutoencoderTiny` with the teacher VAE's number of levels, latent channels and scaling factor."""
    levels = len(teacher_vae.config.block_out_channels)
    return AutoencoderTiny(
        in_channels=teacher_vae.config.in_channels,
        out_channels=teacher_vae.config.out_channels,
        encoder_block_out_channels=(width,) * levels,
        decoder_block_out_channels=(width,) * levels,
        latent_channels=teacher_vae.config.latent_channels,
        num_encoder_blocks=(1,) + (3,) * (levels - 1),
        num_decoder_blocks=(3,) * (levels - 1) + (1,),
        scaling_factor=teacher_vae.config.scaling_factor,
        shift_factor=getattr(teacher_vae.config, "shift_factor", None) or 0.0,
    )


def _pixels(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def psnr_db(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean PSNR of images in [-1, 1] (peak-to-peak 2)."""
    mse = (a.clamp(-1, 1) - b.clamp(-1, 1)).pow(2).flatten(1).mean(dim=1)
    return float((10 * torch.log10(4.0 / mse.clamp(min=1e-10))).mean())


def distil_tiny_vae(
    teacher_vae: AutoencoderKL,
    train_images: np.ndarray,
    held_out_images: np.ndarray,
    settings: TinyVaeSettings,
    seed: int,
    progress: bool = True,
) -> tuple[AutoencoderTiny, dict[str, float]]:
    """Train the tiny VAE on `train_images` (N, H, W, 3) uint8; score its decoder on `held_out_images`."""
    torch.manual_seed(seed)
    tiny = build_tiny_vae(teacher_vae, settings.width).train()
    teacher_vae.eval().requires_grad_(False)
    with torch.no_grad():
        pixels = _pixels(train_images)
        means = torch.cat(
            [teacher_vae.encode(pixels[i : i + 64]).latent_dist.mode() for i in range(0, len(pixels), 64)]
        )
        decoded = torch.cat([teacher_vae.decode(means[i : i + 64]).sample for i in range(0, len(means), 64)])
    optimizer = torch.optim.AdamW(tiny.parameters(), lr=settings.learning_rate, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    start, losses = time.perf_counter(), []
    for step in progress_bar(range(settings.steps), desc="tiny VAE", disable=not progress):
        warmup = min(1.0, (step + 1) / settings.warmup_steps)
        for group in optimizer.param_groups:
            group["lr"] = settings.learning_rate * warmup * 0.5 * (1 + math.cos(math.pi * step / settings.steps))
        idx = torch.randint(0, len(means), (settings.batch_size,), generator=generator)
        images, target = tiny.decode(means[idx]).sample, decoded[idx]
        # The teacher VAE's own loss: L1 + MSE + 4 × L1 of the high-pass (low-contrast textures vanish without it).
        decode_loss = F.l1_loss(images, target) + F.mse_loss(images, target)
        decode_loss = decode_loss + 4.0 * F.l1_loss(high_pass(images), high_pass(target))
        encode_loss = F.mse_loss(tiny.encode(pixels[idx]).latents, means[idx])
        loss = decode_loss + encode_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    tiny.eval().requires_grad_(False)
    with torch.no_grad():
        held = _pixels(held_out_images)
        latents = teacher_vae.encode(held).latent_dist.mode()
        reference = teacher_vae.decode(latents).sample
        metrics = {
            "decoder_psnr_vs_teacher_db": psnr_db(tiny.decode(latents).sample, reference),
            "teacher_decoder_psnr_vs_image_db": psnr_db(reference, held),
            "tiny_decoder_psnr_vs_image_db": psnr_db(tiny.decode(latents).sample, held),
            "encoder_mse": float(F.mse_loss(tiny.encode(held).latents, latents)),
            "final_loss": float(np.mean(losses[-50:])),
            "seconds": time.perf_counter() - start,
        }
    logger.info("tiny VAE: decoder %.2f dB from the teacher decoder's images", metrics["decoder_psnr_vs_teacher_db"])
    return tiny, metrics


def score_pretrained_decoder(tiny: AutoencoderTiny, teacher_vae: AutoencoderKL, images: np.ndarray) -> dict:
    """PSNR of a pretrained tiny decoder's images against the teacher decoder's, both from the UNet's latents of
    `images` (N, H, W, 3) uint8: read with the decoder's own scaling factor, and with the other convention (1.0
    against the teacher's), so a config whose factor is wrong shows up as the other reading scoring higher."""
    teacher, own = teacher_vae.config, float(tiny.config.scaling_factor)
    other = float(teacher.scaling_factor) if own == 1.0 else 1.0
    shift = float(getattr(tiny.config, "shift_factor", None) or 0.0)
    device = next(teacher_vae.parameters()).device
    tiny.to(device)
    with torch.no_grad():
        pixels = _pixels(images).to(device)
        raw = torch.cat([teacher_vae.encode(pixels[i : i + 8]).latent_dist.mode() for i in range(0, len(pixels), 8)])
        reference = torch.cat([teacher_vae.decode(raw[i : i + 8]).sample for i in range(0, len(raw), 8)])
        unet_latents = (raw - (getattr(teacher, "shift_factor", None) or 0.0)) * teacher.scaling_factor
        decoded = {f: tiny.decode(unet_latents / f + shift).sample for f in (own, other)}
    metrics = {
        "decoder_psnr_vs_teacher_db": psnr_db(decoded[own], reference),
        "decoder_psnr_vs_teacher_other_scaling_db": psnr_db(decoded[other], reference),
        "teacher_decoder_psnr_vs_image_db": psnr_db(reference, pixels),
        "tiny_decoder_psnr_vs_image_db": psnr_db(decoded[own], pixels),
        "scaling_factor": own,
        "other_scaling_factor": other,
    }
    if metrics["decoder_psnr_vs_teacher_other_scaling_db"] > metrics["decoder_psnr_vs_teacher_db"] + 3.0:
        logger.warning(
            "the tiny decoder's images are closer to the teacher decoder's with scaling factor %g than with its "
            "config's %g (%.1f vs %.1f dB): is scaling_factor in its config.json right? (TAESD for SD1.x: 1.0)",
            other,
            own,
            metrics["decoder_psnr_vs_teacher_other_scaling_db"],
            metrics["decoder_psnr_vs_teacher_db"],
        )
    return metrics


def train_tiny_decoder(cfg: DistillConfig, device: torch.device) -> None:
    """`--from RUN --tiny-decoder`: the run's student with a tiny VAE distilled from the teacher's; with
    `--tiny-decoder-from DIR`, with that pretrained one instead (scored against the teacher's decoder, not trained)."""
    run, source = cfg.output_dir, Path(cfg.from_run)
    teacher = load_teacher(cfg.teacher, cfg.controlnet, torch.float32, device, teacher_config=cfg.teacher_config)
    labelled, unlabelled = load_training_data(cfg, run)
    size = cfg.resolution or teacher.resolution
    rows = labelled + unlabelled
    held_out = np.arange(len(rows)) % 10 == 9  # every tenth image scores the decoder
    write_json(run / "config.json", {**cfg.to_json(), "resolved": {"resolution": size, "images": len(rows)}})
    if cfg.tiny_decoder_from is not None:  # only the scored images are read: the dataset may be large
        tiny = load_tiny_decoder(cfg.tiny_decoder_from, teacher.vae.config)
        picked = (np.flatnonzero(held_out) if held_out.any() else np.arange(len(rows)))[:PRETRAINED_SCORED_IMAGES]
        scored = np.stack([load_image(rows[i].path, size) for i in picked])
        metrics = {**score_pretrained_decoder(tiny, teacher.vae, scored), "pretrained_from": cfg.tiny_decoder_from}
        logger.info(
            "pretrained tiny decoder: %.2f dB from the teacher decoder's images", metrics["decoder_psnr_vs_teacher_db"]
        )
        held_out_images = len(scored)
    else:
        images = np.stack([load_image(r.path, size) for r in rows])
        settings = TinyVaeSettings(
            cfg.tiny_decoder_width, cfg.max_steps, cfg.batch_size, cfg.learning_rate, cfg.warmup_steps
        )
        tiny, metrics = distil_tiny_vae(teacher.vae, images[~held_out], images[held_out], settings, cfg.seed)
        held_out_images = int(held_out.sum())
    student = load_run_student(source, device)
    sampling = read_recommendation(source / "student") or GUIDED_DEFAULT  # a run older than recommendations: guided
    save_student(run / "student", teacher, student, sampling, vae=tiny)
    write_json(
        run / "metrics.json",
        {
            **metrics,
            "tiny_vae_params": count_params(tiny),
            "teacher_vae_params": count_params(teacher.vae),
            "held_out_images": held_out_images,
        },
    )
