"""The built-in teacher's architecture: SD1.5 + ControlNet's component classes at a size that trains on 2 CPU cores.

`AutoencoderKL` with 3 levels (scale factor 4: 64×64×3 images ↔ 16×16×4 latents), a 3-layer `CLIPTextModel`
(the real 49,408-token CLIP tokenizer), a `UNet2DConditionModel` with SD1.5's layout at small width, the
`ControlNetModel.from_unet` of it, and a `DDIMScheduler`. No self-attention at the full latent resolution (it
dominates CPU cost); cross-attention at 8×8 and in the 4×4 mid block. Training noise is DDPM's linear schedule
(near-zero terminal SNR, right for small latents); sampling uses DDIM with the same betas. How each is trained:
`teacher_recipe.py`.
"""

from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from refine_control.builtin.shapes import RESOLUTION

LATENT = RESOLUTION // 4
TEXT_HIDDEN = 48


def build_vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=RESOLUTION,
    )


def build_text_encoder(vocab_size: int) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=TEXT_HIDDEN,
        intermediate_size=4 * TEXT_HIDDEN,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=TEXT_HIDDEN,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    return CLIPTextModel(config)


def build_unet() -> UNet2DConditionModel:
    # SD1.5's layout at small scale: 2 layers per block, attention everywhere but the full-resolution stage
    # (and, like SD's last stage, not at the lowest one; the 4×4 mid block has it).
    return UNet2DConditionModel(
        sample_size=LATENT,
        in_channels=4,
        out_channels=4,
        block_out_channels=(48, 96, 96),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_HIDDEN,
        attention_head_dim=4,  # diffusers' name for the number of heads
        norm_num_groups=8,
    )


def build_controlnet(unet: UNet2DConditionModel) -> ControlNetModel:
    # One entry per halving (64 → 32 → 16) plus one: the control image is downsampled by the VAE's factor 4.
    return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32, 64))


def build_scheduler() -> DDIMScheduler:
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule="linear",
        prediction_type="epsilon",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
