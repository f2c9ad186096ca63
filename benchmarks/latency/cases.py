"""The models of a run and how each is built: real `StableDiffusionControlNetPipeline`s wrapped as the exporter's
`Student`, so the benchmark exports and times exactly what `refine-export` and the runtime would.

- the teacher: the `--teacher` pipeline dir (trained weights), or at `--scale sd15` the SD1.5 UNet + ControlNet,
  CLIP ViT-L/14 text encoder and SD VAE built from their configs with seeded random weights and the real CLIP
  tokenizer (`refine_control.builtin.tokenizer`);
- a preset: `build_student` on the teacher's configs (random weights), on the teacher's text encoder and VAE;
- a few-step preset (sd15): the same with the guidance embedding (`with_guidance_input`) and an LCM scheduler;
- a run: `load_student(RUN, read_run_config(RUN))`, its own components and, for a few-step run, its
  `student/sampling.json`.

Latency does not depend on weight values. Modules that are only counted are built on the meta device.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import FEW_STEP_SUFFIX, TEACHER, BenchConfig

# SD1.5 (runwayml/stable-diffusion-v1-5 + lllyasviel ControlNet 1.1) configs; the rest are diffusers' defaults.
SD15_UNET = {"cross_attention_dim": 768, "sample_size": 64}
SD15_CONTROLNET = {"cross_attention_dim": 768}
SD15_VAE = {
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
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
SD15_SCHEDULER = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


@dataclass(frozen=True)
class ModelSpec:
    """One model to measure; worker processes rebuild it from this."""

    name: str
    kind: str  # "teacher" | "preset" | "run"
    source: str  # teacher pipeline dir, "sd15", or run dir
    preset: str | None = None
    few_step: bool = False  # a preset given the guidance embedding (a few-step student's architecture)

    @property
    def components(self) -> bool:
        """Whether its own text encoder and VAE decoder are measured (presets use the teacher's)."""
        return self.kind != "preset"


@dataclass(frozen=True)
class Sampling:
    """How one image is made: `steps` denoiser calls at `batch` (2: the classifier-free guidance pair; 1: the
    guidance scale is an input of a few-step student), text encoder at `batch`, one VAE decode."""

    steps: int
    batch: int
    guidance_scale: float

    @property
    def guidance(self) -> str:
        return "pair" if self.batch == 2 else "embedded"


def model_specs(cfg: BenchConfig) -> list[ModelSpec]:
    """Teacher first, then every preset, the few-step preset, then the trained runs."""
    from refine_control.models.presets import STUDENT_PRESETS
    from refine_control.models.teacher import resolve_teacher_path

    source = "sd15" if cfg.scale == "sd15" else str(resolve_teacher_path(cfg.teacher))
    presets = cfg.presets if cfg.presets is not None else tuple(STUDENT_PRESETS.names())
    specs = [ModelSpec(TEACHER, "teacher", source)]
    specs += [ModelSpec(p, "preset", source, p) for p in presets]
    if cfg.few_step_preset:
        specs.append(ModelSpec(cfg.few_step_preset + FEW_STEP_SUFFIX, "preset", source, cfg.few_step_preset, True))
    specs += [ModelSpec(name, "run", run) for name, run in cfg.runs]
    return specs


def sampling_of(spec: ModelSpec, geometry: Any, cfg: BenchConfig) -> Sampling:
    """A guidance-embedded denoiser samples as its run recommends (batch 1); every other model `--steps` CFG pairs."""
    if not geometry.guidance_embedded:
        return Sampling(cfg.steps, 2, cfg.guidance_scale)
    if spec.kind == "run":
        from refine_control.models.pipeline_dir import read_recommendation

        recommended = read_recommendation(Path(spec.source) / "student")
        if recommended is not None:
            return Sampling(recommended.steps, 1, recommended.guidance_scale)
    return Sampling(cfg.few_step_steps, 1, cfg.guidance_scale)


def teacher_pipeline(source: str, denoiser_device: str = "cpu", components_device: str = "cpu") -> Any:
    """The teacher's pipeline: loaded from its dir, or SD1.5-sized with seeded random weights (UNet + ControlNet on
    `denoiser_device`, text encoder and VAE on `components_device`: "meta" where only their configs are read)."""
    if source != "sd15":
        from refine_control.models.pipeline_dir import load_pipeline

        return load_pipeline(source)
    import torch
    from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from refine_control.builtin.tokenizer import build_clip_tokenizer

    torch.manual_seed(0)
    with torch.device(denoiser_device):
        unet, controlnet = UNet2DConditionModel.from_config(SD15_UNET), ControlNetModel.from_config(SD15_CONTROLNET)
    with torch.device(components_device):
        text_encoder, vae = CLIPTextModel(CLIPTextConfig(**SD15_TEXT)), AutoencoderKL.from_config(SD15_VAE)
    tokenizer = build_clip_tokenizer(SD15_TEXT["max_position_embeddings"])
    return _pipeline(unet, controlnet, text_encoder, vae, tokenizer, DDIMScheduler(**SD15_SCHEDULER))


def _pipeline(unet: Any, controlnet: Any, text_encoder: Any, vae: Any, tokenizer: Any, scheduler: Any) -> Any:
    from diffusers import StableDiffusionControlNetPipeline

    for module in (unet, controlnet, text_encoder, vae):
        module.eval().requires_grad_(False)
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


def build(spec: ModelSpec, teacher: Any, resolution: int | None, device: str = "cpu") -> Any:
    """The model as the exporter's `Student`. `teacher` is the teacher's pipeline (a preset takes its configs,
    text encoder, VAE, tokenizer and scheduler); a preset's random denoiser is built on `device`."""
    from refine_control.export.onnx_export import Student, load_student
    from refine_control.training.config import read_run_config

    config = {"resolved": {"resolution": resolution}}
    if spec.kind == "teacher":
        return Student(Path(spec.source), config, teacher)
    if spec.kind == "run":
        run = Path(spec.source)
        return load_student(run, read_run_config(run))
    import torch
    from diffusers import LCMScheduler

    from refine_control.models.denoiser import with_guidance_input
    from refine_control.models.presets import STUDENT_PRESETS, build_student

    torch.manual_seed(0)
    with torch.device(device):
        unet, controlnet = build_student(teacher.unet, teacher.controlnet, STUDENT_PRESETS.get(spec.preset or ""))
        if unet is teacher.unet and unet.device != torch.device(device):  # a controlnet-* preset shares the UNet
            unet = type(unet).from_config(unet.config)
        if spec.few_step:
            unet = with_guidance_input(unet)
    scheduler = LCMScheduler.from_config(teacher.scheduler.config) if spec.few_step else teacher.scheduler
    pipeline = _pipeline(unet, controlnet, teacher.text_encoder, teacher.vae, teacher.tokenizer, scheduler)
    return Student(Path(spec.source), config, pipeline)


def count(student: Any, sizes: list[int]) -> dict[str, Any]:
    """Parameters and MACs at batch 1 (denoiser step, text encoder, VAE decode per size), on the meta device."""
    import torch

    from refine_control.models.cost import count_macs, denoiser_macs
    from refine_control.models.presets import count_params

    pipe, geometry = student.pipeline, student.geometry
    with torch.device("meta"):
        text = type(pipe.text_encoder)(pipe.text_encoder.config)
        vae = type(pipe.vae).from_config(pipe.vae.config)
    ids = torch.zeros(1, geometry.text_max_length, dtype=torch.int64, device="meta")
    text_macs = count_macs(lambda: text(ids))
    macs = {}
    for size in sizes:
        latent = torch.zeros(geometry.latent_shape(size, size), device="meta")
        macs[str(size)] = {
            "step": denoiser_macs(
                pipe.unet, pipe.controlnet, size, geometry.vae_scale_factor, geometry.text_max_length
            ),
            "text_encoder": text_macs,
            "vae_decode": count_macs(lambda latent=latent: vae.decode(latent)),
        }
    return {
        "params": {
            "unet": count_params(pipe.unet),
            "controlnet": count_params(pipe.controlnet),
            "denoiser": count_params(pipe.unet, pipe.controlnet),
            "text_encoder": count_params(pipe.text_encoder),
            "vae_decoder": count_params(pipe.vae.decoder, *_post_quant(pipe.vae)),
        },
        "macs": macs,
        "geometry": geometry.to_facts(),
    }


def _post_quant(vae: Any) -> list[Any]:
    """AutoencoderKL decodes through `post_quant_conv` too; a tiny (TAESD-like) decoder has none."""
    conv = getattr(vae, "post_quant_conv", None)
    return [conv] if conv is not None else []
