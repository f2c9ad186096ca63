"""Tiny random models and data shared by the tests (a plain module: conftest files are not importable by name
when several test folders have one)."""


def build_tiny_pipeline(seed: int = 0):
    """A real StableDiffusionControlNetPipeline with tiny random components (16 px images, 8×8 latents).

    Two stages with cross-attention and two layers per block, so every student preset has something to shrink.
    """
    import torch
    from diffusers import (
        AutoencoderKL,
        ControlNetModel,
        DDIMScheduler,
        StableDiffusionControlNetPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    from refine_control.builtin.tokenizer import build_clip_tokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(16, 32),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=2,
        norm_num_groups=8,
    )
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16))
    # ControlNet's output convs start at zero; give them weights so the residuals matter in tests.
    for conv in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
        torch.nn.init.normal_(conv.weight, std=0.1)
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
    )
    tokenizer = build_clip_tokenizer()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            projection_dim=32,
        )
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return StableDiffusionControlNetPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        controlnet=controlnet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def write_image_folder(root, n: int, labelled: bool = True, size: int = 16, seed: int = 0):
    """A small image folder of coloured squares with captions (metadata.jsonl)."""
    import json

    import numpy as np
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    colours = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}
    rows = []
    for i in range(n):
        name = list(colours)[i % 3]
        image = np.full((size, size, 3), 255, np.uint8)
        x, y = rng.integers(0, size // 2, 2)
        image[y : y + size // 2, x : x + size // 2] = colours[name]
        Image.fromarray(image).save(root / f"{i:04d}.png")
        row = {"file_name": f"{i:04d}.png"}
        if labelled:
            row["text"] = f"a {name} square"
        rows.append(json.dumps(row))
    (root / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return root


def _folder_rows(folder):
    """(file name, PNG bytes, caption or None) of an image folder written by `write_image_folder`."""
    import json

    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines() if line.strip()]
    return [(r["file_name"], (folder / r["file_name"]).read_bytes(), r.get("text")) for r in rows]


def write_parquet_shards(root, n: int, shards: int = 2, caption_column: str = "text", unlabelled_every: int = 0):
    """`n` coloured squares as parquet shards (image struct {bytes, path} + caption), like a hub dataset export.

    `unlabelled_every` k > 0 leaves every k-th caption empty (an unlabelled row)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir(parents=True, exist_ok=True)
    rows = _folder_rows(write_image_folder(root / "_src", n))
    for s in range(shards):
        part = rows[s::shards]
        table = pa.table(
            {
                "image": [{"bytes": data, "path": name} for name, data, _ in part],
                caption_column: [
                    None if unlabelled_every and int(name[:4]) % unlabelled_every == 0 else text
                    for name, _, text in part
                ],
            }
        )
        pq.write_table(table, root / f"train-{s:05d}.parquet")
    import shutil

    shutil.rmtree(root / "_src")
    return root


def write_tar_shards(root, n: int, shards: int = 2, image_ext: str = "png"):
    """`n` coloured squares as webdataset tar shards: KEY.png + KEY.txt per sample."""
    import io
    import shutil
    import tarfile

    root.mkdir(parents=True, exist_ok=True)
    rows = _folder_rows(write_image_folder(root / "_src", n))
    for s in range(shards):
        with tarfile.open(root / f"train-{s:05d}.tar", "w") as tar:
            for name, data, text in rows[s::shards]:
                key = name.split(".")[0]
                for ext, payload in ((image_ext, data), ("txt", (text or "").encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    shutil.rmtree(root / "_src")
    return root


def build_tiny_autoencoder_tiny(latent_channels: int = 4, scaling_factor: float = 1.0, seed: int = 0):
    """A tiny random diffusers `AutoencoderTiny` (the TAESD architecture) for the tiny teacher's latent space: two
    levels (2 px per latent) and, like TAESD for SD1.x, `scaling_factor` 1.0 (it decodes the UNet's latents as
    they are, where the teacher's `AutoencoderKL` divides them by 0.18215 first)."""
    import torch
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    return AutoencoderTiny(
        encoder_block_out_channels=(8, 8),
        decoder_block_out_channels=(8, 8),
        num_encoder_blocks=(1, 1),
        num_decoder_blocks=(1, 1),
        latent_channels=latent_channels,
        scaling_factor=scaling_factor,
    )
