"""MODEL_CARD.md for the built-in teacher, written from the numbers a training (and evaluation) run measured."""

import json
import logging
from pathlib import Path
from typing import Any

from refine_control.atomic import write_text

logger = logging.getLogger(__name__)


def _weights_mb(path: Path) -> dict[str, float]:
    sizes = {p.parent.name: p.stat().st_size / 1e6 for p in sorted(path.glob("*/*.safetensors"))}
    total = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6
    return {**sizes, "directory total": total}


def _metrics_table(metrics: dict[str, Any]) -> str:
    rows = ["| metric | value |", "|---|---|"]
    for name, value in metrics["metrics"].items():
        rows.append(f"| {name} | {value:.4g} |" if isinstance(value, float) else f"| {name} | {value} |")
    return "\n".join(rows)


def write_model_card(path: str | Path, info: dict[str, Any], metrics: dict[str, Any] | None = None) -> Path:
    """Write `path/MODEL_CARD.md`: architecture, recipe, seed, training time and (if given) measured quality."""
    path = Path(path)
    recipe, params = info["recipe"], info["parameters"]
    sizes = _weights_mb(path)
    lines = [
        "# Built-in shapes teacher",
        "",
        "A small but real diffusers `StableDiffusionControlNetPipeline` (AutoencoderKL, CLIPTextModel with the real",
        "49,408-token CLIP tokenizer, UNet2DConditionModel, ControlNetModel, DDIM scheduler) trained from scratch on",
        "the procedural shapes dataset (`refine_control/builtin/shapes.py`): 64×64 RGB images of one shape",
        "(circle, square, triangle, diamond, cross, star) in one of 6 colours with one of 4 textures (solid, striped,",
        'checkered, dotted), captioned like "a red striped circle"; control = Canny edges of the render.',
        "It is the `--teacher builtin` of `refine-distill`; it is not a general image model.",
        "",
        "## Architecture",
        "",
        "| component | parameters | fp16 file (MB) |",
        "|---|---|---|",
    ]
    for name in ("vae", "text_encoder", "unet", "controlnet"):
        lines.append(f"| {name} | {params[name] / 1e6:.2f} M | {sizes.get(name, 0.0):.1f} |")
    lines += [
        f"| total | {sum(params.values()) / 1e6:.2f} M | directory {sizes['directory total']:.1f} MB |",
        "",
        "- VAE: 3 levels (32, 64, 64), scale factor 4: 64×64×3 images ↔ 16×16×4 latents; "
        f"latent scaling factor {info['vae'].get('scaling_factor')} (1 / std of the latents).",
        "- Text encoder: CLIPTextModel, hidden 48, 3 layers, 4 heads, vocabulary 49,408 (trained from scratch).",
        "- UNet: block widths (48, 96, 96), 2 layers per block, cross-attention (4 heads) at 8×8 and in the 4×4 mid "
        "block, no attention at the full 16×16 latent resolution.",
        "- ControlNet: `ControlNetModel.from_unet`, conditioning embedding (16, 32, 64): the 64×64 control image is "
        "downsampled 4× to the latent grid.",
        "- Scheduler: DDIM for sampling; training noise from the same DDPM linear betas (1e-4 … 0.02, 1000 steps), "
        "ε-prediction.",
        "",
        "## Recipe (reproduce with `refine-teacher`)",
        "",
        "```",
        f"refine-teacher -o refine_control/builtin/teacher --seed {recipe['seed']}"
        + (f" --evaluate {metrics['num_samples']}" if metrics else ""),
        "```",
        "",
        f"Seed {recipe['seed']}; batch {recipe['batch_size']}; a pool of {recipe['pool_size']} distinct `train`-split "
        "shapes, rendered once. Three phases (AdamW, linear warm-up then cosine decay):",
        "",
        "| phase | steps | learning rate | final loss | wall time (s) | CPU time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for phase, steps, lr in (("vae", "vae_steps", "vae_lr"), ("unet", "unet_steps", "unet_lr"),
                             ("controlnet", "controlnet_steps", "controlnet_lr")):  # fmt: skip
        p = info[phase]
        lines.append(
            f"| {phase} | {recipe[steps]} | {recipe[lr]:g} | {p['final_loss']:.4f} | {p['wall_s']:.0f} | {p['cpu_s']:.0f} |"
        )
    lines += [
        "",
        "1. VAE on 32×32 crops around the shape (on the texture grid): L1 + MSE + 4 × L1 of a 3×3 high-pass (the "
        "low-contrast textures vanish without it) + 1e-6 KL, decoding the posterior mean; reconstruction PSNR on "
        f"1,024 training shapes (whole images): {info['vae']['recon_psnr_db']:.2f} dB.",
        f"2. UNet + text encoder together, text-to-image, min-SNR-5 weighting, {recipe['caption_dropout']:.0%} empty "
        "captions (for classifier-free guidance).",
        "3. ControlNet on the frozen UNet and text encoder, same loss and caption dropout.",
        "",
        f"Total training time: {info['total']['wall_s'] / 60:.1f} min wall clock on {info['torch_threads']} CPU threads "
        "(the CPU time column is summed over threads; on a shared machine wall time grows with other load).",
        "",
    ]
    if metrics:
        lines += [
            "## Measured quality",
            "",
            f"`refine-eval builtin --num-samples {metrics['num_samples']} --seed {metrics['seed']}`: "
            f"{metrics['num_samples']} held-out `test`-split shapes (never in any training split), "
            f"{metrics['sampling']['steps']} DDIM steps, guidance scale {metrics['sampling']['guidance_scale']}. "
            "Domain FID/KID use the oracle classifier's features, not Inception (not comparable to published FIDs).",
            "",
            _metrics_table(metrics),
            "",
        ]
    else:
        lines += ["## Measured quality", "", "Not measured in this run: `refine-eval builtin` measures it.", ""]
    lines += [
        "## Files",
        "",
        "Saved with `save_pretrained` as fp16 safetensors; load in fp32 with",
        "`StableDiffusionControlNetPipeline.from_pretrained(dir, dtype=torch.float32)`. `training.json` holds",
        "the raw training log.",
        "",
    ]
    write_text(path / "MODEL_CARD.md", "\n".join(lines))
    if metrics:
        write_text(path / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    logger.info("model card written to %s", path / "MODEL_CARD.md")
    return path / "MODEL_CARD.md"
