"""An SD1.5-shaped teacher directory holding configs only (no weights): what `--dry-run` and the scale table read.

The values are those of the published SD1.5 configs (runwayml/stable-diffusion-v1-5 + a ControlNet 1.1), as
benchmarks/latency/cases.py builds them; everything else is diffusers' defaults."""

import json
from pathlib import Path

SD15_UNET = {"cross_attention_dim": 768, "sample_size": 64}
SD15_CONTROLNET = {"cross_attention_dim": 768}
SD15_VAE = {
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "latent_channels": 4,
    "layers_per_block": 2,
    "sample_size": 512,
}
SD15_TEXT = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
}


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
