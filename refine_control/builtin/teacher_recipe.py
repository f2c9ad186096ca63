"""The built-in teacher's recipe: a small, real `StableDiffusionControlNetPipeline` trained from a seed on shapes.

Three phases, as for SD1.5 + ControlNet, at a size that trains on 2 CPU cores in well under an hour:

1. `AutoencoderKL` (3 levels, scale factor 4: 64×64×3 images ↔ 16×16×4 latents), reconstruction + tiny KL; the
   latent scaling factor is set to 1 / std of the latents, as SD's 0.18215 was.
2. `UNet2DConditionModel` + `CLIPTextModel` (trained together from scratch: no pretrained CLIP exists offline;
   the tokenizer is the real 49,408-token CLIP one), text-to-image, ε-prediction, min-SNR-5 weighting, 10% empty
   captions for classifier-free guidance.
3. `ControlNetModel.from_unet` on the frozen UNet and text encoder, conditioned on Canny edges of the render.

The architecture of each component is in `architecture.py`. Every phase seeds its own RNGs from the recipe seed,
so a phase cached in the work dir gives the same result as a run from scratch.
"""

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, ControlNetModel, StableDiffusionControlNetPipeline, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from refine_control.atomic import atomic_dir, write_json
from refine_control.builtin.architecture import (
    build_controlnet,
    build_scheduler,
    build_text_encoder,
    build_unet,
    build_vae,
)
from refine_control.builtin.shapes import RESOLUTION, ShapeSample, generate
from refine_control.builtin.tokenizer import build_clip_tokenizer
from refine_control.errors import ConfigError
from refine_control.losses.terms import high_pass

logger = logging.getLogger(__name__)

VAE_CROP = 32
MIN_SNR_GAMMA = 5.0


@dataclass(frozen=True)
class TeacherRecipe:
    """Hyper-parameters of `refine-teacher`; the defaults produced the committed weights."""

    seed: int = 0
    batch_size: int = 32
    pool_size: int = 16384  # distinct `train` shapes, rendered once and reused by every phase
    vae_steps: int = 2000
    unet_steps: int = 2500
    controlnet_steps: int = 2000
    vae_lr: float = 2e-3
    unet_lr: float = 5e-4
    controlnet_lr: float = 5e-4
    warmup_steps: int = 100
    caption_dropout: float = 0.1

    def __post_init__(self) -> None:
        for name in ("batch_size", "pool_size", "vae_steps", "unet_steps", "controlnet_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"`--{name.replace('_', '-')}` must be >= 1, got {getattr(self, name)}")
        if self.pool_size < self.batch_size:
            raise ConfigError(f"`--pool-size` ({self.pool_size}) must be at least `--batch-size` ({self.batch_size})")
        if not 0.0 <= self.caption_dropout < 1.0:
            raise ConfigError(f"`--caption-dropout` must be in [0, 1), got {self.caption_dropout}")


@dataclass
class _Pool:
    images: torch.Tensor  # (N, 3, 64, 64) uint8
    controls: torch.Tensor  # (N, 1, 64, 64) bool, Canny edges
    captions: list[str]
    centres: np.ndarray  # (N, 2) the shapes' (cx, cy)

    def image_batch(self, idx: np.ndarray) -> torch.Tensor:
        return self.images[idx].float() / 127.5 - 1.0

    def crop_batch(self, idx: np.ndarray, size: int, rng: np.random.Generator) -> torch.Tensor:
        """`size`² crops around each shape, at offsets on the 8-pixel grid (so on the latent grid)."""
        crops = []
        for i in idx:
            offsets = self.centres[i] - size // 2 + rng.integers(-8, 9, 2)
            x, y = (int(v) for v in np.clip(offsets // 8 * 8, 0, RESOLUTION - size))
            crops.append(self.images[i, :, y : y + size, x : x + size])
        return torch.stack(crops).float() / 127.5 - 1.0

    def control_batch(self, idx: np.ndarray) -> torch.Tensor:
        return self.controls[idx].float().expand(-1, 3, -1, -1)


def _make_pool(recipe: TeacherRecipe) -> _Pool:
    samples: list[ShapeSample] = generate("train", recipe.pool_size, recipe.seed)
    images = torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2).contiguous()
    controls = torch.from_numpy(np.stack([s.control[..., 0] > 0.5 for s in samples]))[:, None]
    centres = np.array([(s.spec.cx, s.spec.cy) for s in samples])
    return _Pool(images, controls, [s.caption for s in samples], centres)


def _lr_lambda(warmup: int, total: int) -> Any:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    return factor


def _phase_seed(seed: int, phase: int) -> tuple[torch.Generator, np.random.Generator]:
    torch.manual_seed(seed * 100 + phase)
    return torch.Generator().manual_seed(seed * 100 + phase), np.random.default_rng([seed, phase])


class _Timer:
    """Wall and process CPU time of a phase (CPU time shows how contended the cores were)."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def elapsed(self) -> dict[str, float]:
        return {"wall_s": round(time.perf_counter() - self.wall, 1), "cpu_s": round(time.process_time() - self.cpu, 1)}


def _log_progress(phase: str, step: int, total: int, losses: list[float], timer: _Timer) -> None:
    if (step + 1) % 50 == 0 or step + 1 == total:
        elapsed = timer.elapsed()["wall_s"]
        logger.info(
            "%s step %d/%d loss %.4f (%.2f s/step)",
            phase,
            step + 1,
            total,
            float(np.mean(losses[-100:])),
            elapsed / (step + 1),
        )


def train_vae(recipe: TeacherRecipe, pool: _Pool) -> tuple[AutoencoderKL, dict[str, Any]]:
    """Phase 1: the autoencoder on 32×32 crops (4× cheaper than whole images; it is fully convolutional but for
    the mid-block attention), L1 + MSE + 4 × L1 of the high-pass, and SD's KL weight of 1e-6 (it only keeps the
    latents' scale in check). The decoder sees the posterior mean: with sampled latents the unit noise of an
    untrained posterior drowns the low-contrast textures for thousands of steps. Later phases use the mean too."""
    _, rng = _phase_seed(recipe.seed, 1)
    vae = build_vae().train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=recipe.vae_lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(recipe.warmup_steps, recipe.vae_steps))
    timer, losses = _Timer(), []
    for step in range(recipe.vae_steps):
        x = pool.crop_batch(rng.integers(0, len(pool.captions), recipe.batch_size), VAE_CROP, rng)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.mode()).sample
        loss = F.l1_loss(recon, x) + F.mse_loss(recon, x) + 4.0 * F.l1_loss(high_pass(recon), high_pass(x))
        loss = loss + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        _log_progress("vae", step, recipe.vae_steps, losses, timer)
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        x = pool.image_batch(np.arange(min(1024, len(pool.captions))))
        latents = vae.encode(x).latent_dist.mode()
        mse = F.mse_loss(vae.decode(latents).sample.clamp(-1, 1), x).item()
        scaling = 1.0 / float(latents.std())
    vae.register_to_config(scaling_factor=scaling)
    psnr = 10 * math.log10(4.0 / mse)  # images in [-1, 1]: peak-to-peak 2
    info = {**timer.elapsed(), "final_loss": float(np.mean(losses[-50:])), "recon_psnr_db": round(psnr, 2)}
    info["scaling_factor"] = round(scaling, 5)
    logger.info("vae done: reconstruction PSNR %.2f dB, scaling factor %.4f", psnr, scaling)
    return vae, info


def _encode_pool(vae: AutoencoderKL, pool: _Pool) -> torch.Tensor:
    """The posterior means (N, 4, 16, 16), unscaled."""
    with torch.no_grad():
        means = [
            vae.encode(pool.image_batch(np.arange(start, min(start + 256, len(pool.captions))))).latent_dist.mode()
            for start in range(0, len(pool.captions), 256)
        ]
    return torch.cat(means)


def _token_ids(tokenizer: CLIPTokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(
        captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


def _noisy_batch(
    latents: torch.Tensor,
    scaling: float,
    idx: np.ndarray,
    alphas: torch.Tensor,
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(noisy latents, timesteps, noise, min-SNR loss weights) for the pool rows `idx`."""
    clean = latents[idx] * scaling
    noise = torch.randn(clean.shape, generator=gen)
    t = torch.randint(0, len(alphas), (len(idx),), generator=gen)
    a = alphas[t].view(-1, 1, 1, 1)
    noisy = a.sqrt() * clean + (1 - a).sqrt() * noise
    snr = alphas[t] / (1 - alphas[t])
    return noisy, t, noise, torch.clamp(snr, max=MIN_SNR_GAMMA) / snr


def _weighted_mse(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return (F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3)) * weights).mean()


def _drop_captions(ids: torch.Tensor, empty: torch.Tensor, p: float, rng: np.random.Generator) -> torch.Tensor:
    drop = torch.from_numpy(rng.random(len(ids)) < p)
    return torch.where(drop[:, None], empty[None], ids)


def train_unet(
    recipe: TeacherRecipe,
    pool: _Pool,
    latents: torch.Tensor,
    scaling: float,
    tokenizer: CLIPTokenizer,
) -> tuple[UNet2DConditionModel, CLIPTextModel, dict[str, Any]]:
    """Phase 2: text-to-image UNet and text encoder, trained together."""
    gen, rng = _phase_seed(recipe.seed, 2)
    unet, text_encoder = build_unet().train(), build_text_encoder(len(tokenizer)).train()
    alphas = build_scheduler().alphas_cumprod
    ids, empty = _token_ids(tokenizer, pool.captions), _token_ids(tokenizer, [""])[0]
    params = [*unet.parameters(), *text_encoder.parameters()]
    optimizer = torch.optim.AdamW(params, lr=recipe.unet_lr, weight_decay=1e-2)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(recipe.warmup_steps, recipe.unet_steps))
    timer, losses = _Timer(), []
    for step in range(recipe.unet_steps):
        idx = rng.integers(0, len(pool.captions), recipe.batch_size)
        noisy, t, noise, weights = _noisy_batch(latents, scaling, idx, alphas, gen)
        text = text_encoder(_drop_captions(ids[idx], empty, recipe.caption_dropout, rng))[0]
        loss = _weighted_mse(unet(noisy, t, text).sample, noise, weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        _log_progress("unet", step, recipe.unet_steps, losses, timer)
    unet.eval().requires_grad_(False)
    text_encoder.eval().requires_grad_(False)
    return unet, text_encoder, {**timer.elapsed(), "final_loss": float(np.mean(losses[-100:]))}


def train_controlnet(
    recipe: TeacherRecipe,
    pool: _Pool,
    latents: torch.Tensor,
    scaling: float,
    tokenizer: CLIPTokenizer,
    unet: UNet2DConditionModel,
    text_encoder: CLIPTextModel,
) -> tuple[ControlNetModel, dict[str, Any]]:
    """Phase 3: the ControlNet (initialised from the UNet's encoder) on the frozen UNet and text encoder."""
    gen, rng = _phase_seed(recipe.seed, 3)
    controlnet = build_controlnet(unet).train()
    alphas = build_scheduler().alphas_cumprod
    # Frozen text encoder: embed each distinct caption once.
    distinct = [*sorted(set(pool.captions)), ""]
    with torch.no_grad():
        table = text_encoder(_token_ids(tokenizer, distinct))[0]
    row = {caption: i for i, caption in enumerate(distinct)}
    caption_rows = torch.tensor([row[c] for c in pool.captions])
    optimizer = torch.optim.AdamW(controlnet.parameters(), lr=recipe.controlnet_lr, weight_decay=1e-2)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(recipe.warmup_steps, recipe.controlnet_steps))
    timer, losses = _Timer(), []
    for step in range(recipe.controlnet_steps):
        idx = rng.integers(0, len(pool.captions), recipe.batch_size)
        noisy, t, noise, weights = _noisy_batch(latents, scaling, idx, alphas, gen)
        rows = torch.where(torch.from_numpy(rng.random(len(idx)) < recipe.caption_dropout), row[""], caption_rows[idx])
        text = table[rows]
        down, mid = controlnet(noisy, t, text, controlnet_cond=pool.control_batch(idx), return_dict=False)
        pred = unet(noisy, t, text, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
        loss = _weighted_mse(pred, noise, weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(controlnet.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        _log_progress("controlnet", step, recipe.controlnet_steps, losses, timer)
    controlnet.eval().requires_grad_(False)
    return controlnet, {**timer.elapsed(), "final_loss": float(np.mean(losses[-100:]))}


def _cached(work_dir: Path | None, phase: str, key: dict[str, Any]) -> Path | None:
    """The work-dir folder of a finished phase trained with the same settings, if there is one."""
    if work_dir is None:
        return None
    folder = work_dir / phase
    stamp = folder / "phase.json"
    if stamp.is_file() and json.loads(stamp.read_text()).get("key") == key:
        return folder
    return None


def _save_phase(
    work_dir: Path | None, phase: str, key: dict[str, Any], info: dict[str, Any], modules: dict[str, Any]
) -> None:
    if work_dir is None:
        return
    with atomic_dir(work_dir / phase) as tmp:
        for name, module in modules.items():
            module.save_pretrained(tmp / name)
        write_json(tmp / "phase.json", {"key": key, "info": info})


def _phase_keys(recipe: TeacherRecipe) -> dict[str, dict[str, Any]]:
    r = asdict(recipe)
    common = {k: r[k] for k in ("seed", "batch_size", "pool_size", "warmup_steps")}
    vae = {**common, "steps": r["vae_steps"], "lr": r["vae_lr"]}
    unet = {**vae, "unet_steps": r["unet_steps"], "unet_lr": r["unet_lr"], "dropout": r["caption_dropout"]}
    controlnet = {**unet, "controlnet_steps": r["controlnet_steps"], "controlnet_lr": r["controlnet_lr"]}
    return {"vae": vae, "unet": unet, "controlnet": controlnet}


def train_teacher(recipe: TeacherRecipe, output_dir: str | Path, work_dir: str | Path | None = None) -> dict[str, Any]:
    """Train the three phases and save the pipeline (fp16 safetensors) to `output_dir`; return the training info.

    With `work_dir`, each finished phase is kept there and reused by a later run with the same settings.
    """
    work = Path(work_dir) if work_dir is not None else None
    keys = _phase_keys(recipe)
    total = _Timer()
    tokenizer = build_clip_tokenizer()
    pool = _make_pool(recipe)
    logger.info("rendered %d training shapes (%d distinct captions)", len(pool.captions), len(set(pool.captions)))
    info: dict[str, Any] = {}

    if cached := _cached(work, "vae", keys["vae"]):
        vae = AutoencoderKL.from_pretrained(cached / "vae").eval().requires_grad_(False)
        info["vae"] = json.loads((cached / "phase.json").read_text())["info"]
    else:
        vae, info["vae"] = train_vae(recipe, pool)
        _save_phase(work, "vae", keys["vae"], info["vae"], {"vae": vae})
    scaling = float(vae.config.scaling_factor)
    latents = _encode_pool(vae, pool)

    if cached := _cached(work, "unet", keys["unet"]):
        unet = UNet2DConditionModel.from_pretrained(cached / "unet").eval().requires_grad_(False)
        text_encoder = CLIPTextModel.from_pretrained(cached / "text_encoder").eval().requires_grad_(False)
        info["unet"] = json.loads((cached / "phase.json").read_text())["info"]
    else:
        unet, text_encoder, info["unet"] = train_unet(recipe, pool, latents, scaling, tokenizer)
        _save_phase(work, "unet", keys["unet"], info["unet"], {"unet": unet, "text_encoder": text_encoder})

    controlnet, info["controlnet"] = train_controlnet(recipe, pool, latents, scaling, tokenizer, unet, text_encoder)
    _save_phase(work, "controlnet", keys["controlnet"], info["controlnet"], {"controlnet": controlnet})

    pipeline = StableDiffusionControlNetPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, controlnet=controlnet,
        scheduler=build_scheduler(), safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    info["total"] = total.elapsed()
    info["recipe"] = asdict(recipe)
    info["parameters"] = {
        name: sum(p.numel() for p in module.parameters())
        for name, module in (("vae", vae), ("text_encoder", text_encoder), ("unet", unet), ("controlnet", controlnet))
    }
    info["torch_threads"] = torch.get_num_threads()
    save_pipeline(pipeline, output_dir, info)
    return info


def save_pipeline(pipeline: StableDiffusionControlNetPipeline, output_dir: str | Path, info: dict[str, Any]) -> Path:
    """Save the pipeline as fp16 safetensors (it loads back in fp32 with `dtype=torch.float32`)."""
    output_dir = Path(output_dir)
    with atomic_dir(output_dir) as tmp:
        pipeline.to(torch.float16).save_pretrained(tmp, safe_serialization=True)
        write_json(tmp / "training.json", info)
    pipeline.to(torch.float32)
    logger.info("teacher saved to %s", output_dir)
    return output_dir
