"""An SD1.5-shaped teacher directory holding configs only (no weights): what `--dry-run` and the scale table read.

The values are those of the published SD1.5 configs (runwayml/stable-diffusion-v1-5 + a ControlNet 1.1), from
benchmarks/latency/cases.py; everything else is diffusers' defaults."""

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.latency.cases import SD15_CONTROLNET, SD15_TEXT, SD15_UNET, SD15_VAE  # noqa: E402


def write_sd15_config_dir(path: Path) -> Path:
    """model_index.json and each component's config.json, in the diffusers pipeline layout, without weights."""
    path.mkdir(parents=True)
    index = {
        "_class_name": "StableDiffusionControlNetPipeline",
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "controlnet": ["diffusers", "ControlNetModel"],
        "scheduler": ["diffusers", "DDIMScheduler"],
    }
    (path / "model_index.json").write_text(json.dumps(index))
    for name, config in (("unet", SD15_UNET), ("controlnet", SD15_CONTROLNET), ("vae", SD15_VAE)):
        (path / name).mkdir()
        (path / name / "config.json").write_text(json.dumps({"_class_name": index[name][1], **config}))
    for name in ("text_encoder", "tokenizer", "scheduler"):
        (path / name).mkdir(exist_ok=True)
    (path / "text_encoder" / "config.json").write_text(json.dumps({"architectures": ["CLIPTextModel"], **SD15_TEXT}))
    return path
