"""One distillation step's model side: turn a data batch into denoiser inputs, run teacher and student on the
same noisy latents, timesteps, text embeddings and conditions, and score the student with the fused loss."""

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from refine_control.losses import LossOutput, TriLevelLoss
from refine_control.models.denoiser import ControlledDenoiser, DenoiserOutput
from refine_control.models.teacher import Teacher

TEXT_CACHE_SIZE = 4096  # caption embeddings kept (the built-in data have 145 distinct captions)


@dataclass
class DenoiserInputs:
    """sample (B, 4, h, w) noisy latents, timestep (B,), encoder_hidden_states (B, L, D),
    controlnet_cond (B, 3, H, W), target (B, 4, h, w) the task-level regression target, weight (B,) each sample's
    weight in the task and output terms."""

    sample: torch.Tensor
    timestep: torch.Tensor
    encoder_hidden_states: torch.Tensor
    controlnet_cond: torch.Tensor
    target: torch.Tensor
    weight: torch.Tensor


class Conditioner:
    """The frozen, shared parts (VAE, text encoder, tokenizer, noise schedule) that prepare denoiser inputs.

    Images are encoded to the VAE posterior's mean (its mode), not a sample: the built-in teacher was trained on
    posterior means, and its VAE's posterior spread is of the order of the latents' own, so samples would bury the
    low-noise timesteps in noise the teacher never saw; students then never learned to finish an image. For SD's
    VAE, whose posterior spread is small, mean and sample differ little.

    Caption embeddings, and with `cache_latents` the latents of each image, are computed once and reused (on the
    built-in data the VAE encode was ~15% of a compact student's step). Each entry is computed alone (batch 1), so
    its value never depends on which batch first needed it, and `--resume` stays bit for bit.
    """

    def __init__(
        self,
        teacher: Teacher,
        device: torch.device,
        dtype: torch.dtype,
        cache_latents: bool = False,
        snr_gamma: float | None = None,
    ) -> None:
        self.vae = teacher.vae
        self.text_encoder = teacher.text_encoder
        self.tokenizer = teacher.tokenizer
        self.noise_scheduler = teacher.noise_scheduler()
        self.device = device
        self.dtype = dtype
        self.cache_latents = cache_latents
        self.snr_gamma = snr_gamma
        self._latents: dict[str, torch.Tensor] = {}
        self._texts: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def encode_text(self, captions: list[str]) -> torch.Tensor:
        for caption in dict.fromkeys(captions):
            if caption not in self._texts:
                if len(self._texts) >= TEXT_CACHE_SIZE:
                    self._texts.pop(next(iter(self._texts)))  # the oldest
                ids = self.tokenizer(
                    [caption],
                    padding="max_length",
                    max_length=self.tokenizer.model_max_length,
                    truncation=True,
                    return_tensors="pt",
                ).input_ids
                self._texts[caption] = self.text_encoder(ids.to(self.device))[0][0]
        return torch.stack([self._texts[c] for c in captions])

    @torch.no_grad()
    def _encode(self, images: np.ndarray) -> torch.Tensor:
        pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
        return self.vae.encode(pixels.to(self.device, self.dtype)).latent_dist.mode()

    def _latents_of(self, images: np.ndarray, keys: list[str] | None) -> torch.Tensor:
        """The VAE posterior mean of each image (unscaled), from the cache when enabled."""
        if keys is None or not self.cache_latents:
            return self._encode(images)
        for i, key in enumerate(keys):
            if key not in self._latents:
                self._latents[key] = self._encode(images[i : i + 1])[0]
        return torch.stack([self._latents[k] for k in keys])

    @torch.no_grad()
    def make_inputs(
        self,
        images: np.ndarray,
        captions: list[str],
        controls: np.ndarray,
        generators: list[torch.Generator],
        keys: list[str] | None = None,
    ) -> DenoiserInputs:
        """images (B, H, W, 3) uint8, controls (B, H, W, 3) float32 → noisy latents and targets for one step.

        Sample i's noise and timestep are drawn from `generators[i]`, so they do not depend on the batch it is in.
        `keys` name the images (e.g. their paths) so that their latents can be cached."""
        latents, text, cond = self.encode(images, captions, controls, keys)
        steps = self.noise_scheduler.config.num_train_timesteps
        noise = torch.stack([torch.randn(latents.shape[1:], generator=g, dtype=latents.dtype) for g in generators])
        timestep = torch.cat([torch.randint(0, steps, (1,), generator=g) for g in generators]).to(self.device)
        noise = noise.to(self.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, timestep)
        prediction_type = self.prediction_type
        if prediction_type == "epsilon":
            target = noise
        elif prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timestep)
        else:
            target = latents
        weight = self._timestep_weight(timestep, prediction_type)
        return DenoiserInputs(noisy, timestep, text, cond, target, weight)

    @property
    def prediction_type(self) -> str:
        return self.noise_scheduler.config.prediction_type

    @torch.no_grad()
    def encode(
        self, images: np.ndarray, captions: list[str], controls: np.ndarray, keys: list[str] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Scaled clean latents (B, C, h, w), text embeddings (B, L, D) and control images (B, 3, H, W)."""
        vae_cfg = self.vae.config
        latents = self._latents_of(images, keys)
        latents = (latents - (getattr(vae_cfg, "shift_factor", None) or 0.0)) * vae_cfg.scaling_factor
        cond = torch.from_numpy(controls).permute(0, 3, 1, 2).to(self.device, self.dtype)
        return latents, self.encode_text(captions), cond

    def _timestep_weight(self, timestep: torch.Tensor, prediction_type: str) -> torch.Tensor:
        """Min-SNR-γ weights ("Efficient Diffusion Training via Min-SNR Weighting Strategy", arXiv 2303.09556),
        or 1 when `snr_gamma` is None. For ε-prediction w = min(SNR, γ) / SNR; for v-prediction
        min(SNR, γ) / (SNR + 1); for x0-prediction min(SNR, γ)."""
        if self.snr_gamma is None:
            return torch.ones(timestep.shape, device=self.device)
        alphas = self.noise_scheduler.alphas_cumprod.to(self.device)[timestep]
        snr = alphas / (1 - alphas)
        clipped = torch.clamp(snr, max=self.snr_gamma)
        if prediction_type == "epsilon":
            return clipped / snr
        if prediction_type == "v_prediction":
            return clipped / (snr + 1)
        return clipped


@torch.no_grad()
def run_teacher(teacher: ControlledDenoiser, inputs: DenoiserInputs, taps: list[str]) -> DenoiserOutput:
    return teacher.forward_features(
        inputs.sample, inputs.timestep, inputs.encoder_hidden_states, inputs.controlnet_cond, taps
    )


@torch.no_grad()
def probe_channels(denoiser: ControlledDenoiser, taps: list[str], teacher: Teacher) -> dict[str, int]:
    """Channels of each tap, from one forward pass at the smallest size the UNet accepts."""
    stages = len(denoiser.unet.config.block_out_channels)
    latent = 2**stages
    size = latent * teacher.vae_scale_factor
    param = next(denoiser.controlnet.parameters())
    sample = torch.zeros(1, denoiser.unet.config.in_channels, latent, latent, device=param.device, dtype=param.dtype)
    text = torch.zeros(1, 1, denoiser.unet.config.cross_attention_dim, device=param.device, dtype=param.dtype)
    cond_channels = denoiser.controlnet.config.conditioning_channels
    cond = torch.zeros(1, cond_channels, size, size, device=param.device, dtype=param.dtype)
    modes = {m: m.training for m in denoiser.modules()}
    denoiser.eval()
    try:
        out = denoiser.forward_features(
            sample, torch.zeros(1, dtype=torch.long, device=param.device), text, cond, taps
        )
    finally:
        for m, mode in modes.items():
            m.train(mode)
    return {name: int(t.shape[1]) for name, t in out.features.items()}


class DistillationModule(nn.Module):
    """Everything that trains: the student denoiser and the loss (whose projectors learn with it).

    This is the module accelerate wraps (DDP etc.); the frozen teacher stays outside it.
    """

    def __init__(self, student: ControlledDenoiser, loss: TriLevelLoss, taps: list[str]) -> None:
        super().__init__()
        self.student = student
        self.loss = loss
        self.taps = taps

    def forward(
        self, inputs: DenoiserInputs, teacher_out: DenoiserOutput | None, teacher_samples: torch.Tensor | None = None
    ) -> LossOutput:
        """`teacher_samples` (B,) bool: the samples the teacher's outputs and features score (None: all)."""
        student_out = self.student.forward_features(
            inputs.sample, inputs.timestep, inputs.encoder_hidden_states, inputs.controlnet_cond, self.taps
        )
        return self.loss(student_out, teacher_out, inputs.target, inputs.weight, teacher_samples)
