"""A pretrained tiny decoder the user brings: a diffusers `AutoencoderTiny` directory (e.g. TAESD for SD1.x, saved
with `save_pretrained`), checked against the latent space of the teacher's VAE. Nothing is downloaded.

Latent scaling. The UNet's latents are the VAE's latents times its `scaling_factor` (SD1.x: 0.18215). Every decoding
path of the project (diffusers' pipeline, the exported runtime, the browser page) divides the UNet's latents by the
*decoder's own* factor before decoding (`vae_scaling_factor` in the manifest). TAESD was trained on the UNet's
latents as they are and its config says `scaling_factor: 1.0`; the SD VAE's config says 0.18215; a tiny VAE
distilled here keeps the teacher's. Each decodes the same latents correctly as long as its own factor travels with
it, so the factor is always read from the decoder's config, never from the teacher's.
"""

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from refine_control.errors import ConfigError

CLASS_NAME = "AutoencoderTiny"
_HINT = (
    "pass a diffusers AutoencoderTiny dir (config.json + diffusion_pytorch_model.safetensors) for the teacher's "
    "latent space, e.g. TAESD for SD1.x (madebyollin/taesd, 4 latent channels), saved locally with save_pretrained"
)


def read_tiny_decoder_config(path: str | Path) -> dict[str, Any]:
    """The config of an `AutoencoderTiny` dir; `ConfigError` for anything else."""
    path = Path(path)
    config_file = path / "config.json"
    if not path.is_dir() or not config_file.is_file():
        raise ConfigError(f"{path} is not a diffusers model directory (no config.json)", hint=_HINT)
    try:
        config = json.loads(config_file.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ConfigError(f"{config_file} is not valid JSON ({err})", hint=_HINT) from None
    name = config.get("_class_name") if isinstance(config, dict) else None
    if name != CLASS_NAME:
        raise ConfigError(f"{path} is not an AutoencoderTiny (its config.json names {name or 'no class'})", hint=_HINT)
    return config


def upsampling(config: Mapping[str, Any]) -> int:
    """Pixels per latent of a VAE config (`AutoencoderKL`, or `AutoencoderTiny` with its own upsampling factor)."""
    levels = len(config.get("decoder_block_out_channels") or config.get("block_out_channels") or (64,)) - 1
    return int(config.get("upsampling_scaling_factor", 2)) ** levels


def check_fits(path: str | Path, config: Mapping[str, Any], reference: Mapping[str, Any]) -> None:
    """Refuse a decoder whose latents or image do not match the reference VAE's (the teacher's, or the student's).

    Shapes only: TAESDXL has TAESD's shapes and passes, though it decodes SDXL's latent space; the PSNR against the
    teacher's decoder that the training stage records (refine_control/training/tiny_decoder.py) tells them apart."""
    checks = [  # a key left out of a config has the diffusers default of both classes (4 latents, 3 colours)
        ("latent channels", config.get("latent_channels", 4), reference.get("latent_channels", 4)),
        ("pixels per latent", upsampling(config), upsampling(reference)),
        ("image channels", config.get("out_channels", 3), reference.get("out_channels", 3)),
    ]
    for what, got, expected in checks:
        if got != expected:
            raise ConfigError(
                f"{path}: the decoder's {what} ({got}) do not match the teacher VAE's ({expected})", hint=_HINT
            )


def load_tiny_decoder(path: str | Path, reference: Mapping[str, Any]) -> Any:
    """The `AutoencoderTiny` in `path` (fp32, eval, no gradients), checked to fit the VAE config `reference`."""
    from diffusers import AutoencoderTiny

    config = read_tiny_decoder_config(path)
    check_fits(path, config, reference)
    try:
        vae = AutoencoderTiny.from_pretrained(path, local_files_only=True, use_safetensors=True)
    except Exception as err:  # diffusers and safetensors raise many types for a broken dir
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConfigError(f"could not load an AutoencoderTiny from {path}: {first[:300]}", hint=_HINT) from err
    return vae.float().eval().requires_grad_(False)


def vae_config_of(pipeline_dir: str | Path) -> dict[str, Any]:
    """The VAE config of a diffusers pipeline dir (e.g. a run's student), read without loading weights."""
    path = Path(pipeline_dir) / "vae" / "config.json"
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read {path} ({err})") from None
