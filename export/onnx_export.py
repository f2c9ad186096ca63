"""Load a distilled student from a run dir and export its three graphs with `torch.onnx.export`.

`denoiser.onnx` is `ControlledDenoiser` itself: one fused graph with the ControlNet's residuals scaled by the
`conditioning_scale` input and wired into the UNet. optimum cannot export this (its UNet config has no residual
inputs), so the graphs are exported directly. The default exporter is the dynamo one (`torch.export`); its
dynamic spatial axes need divisibility constraints (latent size a multiple of the UNet's total downsampling,
control image = VAE factor × latent size). The TorchScript exporter is kept as a fast, deprecated fallback.
"""

import contextlib
import io
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from refine_control.errors import ConfigError, ExportError
from refine_control.export.spec import DENOISER, TEXT_ENCODER, VAE_DECODER, GraphSpec
from refine_control.models.denoiser import ControlledDenoiser

logger = logging.getLogger(__name__)

EXPORTERS = ("dynamo", "torchscript")
# Above this many parameter bytes a graph is written with external data (protobuf's 2 GiB limit).
EXTERNAL_DATA_BYTES = 1_800_000_000


def read_run_config(run: Path) -> dict[str, Any]:
    """Cheap checks of a run dir (no torch): it holds a finished student and a readable config.json."""
    if not run.is_dir():
        raise ConfigError(f"run dir {run} does not exist or is not a directory")
    if not (run / "student" / "model_index.json").is_file():
        raise ConfigError(
            f"run dir {run} holds no student (no student/model_index.json)",
            hint="pass the --output-dir of a finished `refine-distill` run",
        )
    try:
        config = json.loads((run / "config.json").read_text("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"run dir {run} has no config.json; is it a refine-distill run?") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{run / 'config.json'} is not valid JSON ({err})") from err
    if not isinstance(config, dict):
        raise ConfigError(f"{run / 'config.json'} must hold a JSON object")
    return config


@dataclass
class Student:
    """The run's student pipeline (a diffusers `StableDiffusionControlNetPipeline`) and what export needs of it."""

    run: Path
    config: dict[str, Any]
    pipeline: Any

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.pipeline.vae.config.block_out_channels) - 1)

    @property
    def downsampling(self) -> int:
        """The UNet's total downsampling: latent sizes must be multiples of it."""
        return 2 ** (len(self.pipeline.unet.config.block_out_channels) - 1)

    @property
    def size_multiple(self) -> int:
        return self.vae_scale_factor * self.downsampling

    @property
    def resolution(self) -> int:
        resolved = self.config.get("resolved", {}).get("resolution")
        return int(resolved or self.pipeline.unet.config.sample_size * self.vae_scale_factor)

    def denoiser(self) -> ControlledDenoiser:
        return ControlledDenoiser(self.pipeline.unet, self.pipeline.controlnet).eval()


def load_student(run: Path, config: dict[str, Any]) -> Student:
    """Load RUN/student with diffusers (local files only) and refuse features the fused graph does not carry."""
    from diffusers import StableDiffusionControlNetPipeline

    try:
        pipeline = StableDiffusionControlNetPipeline.from_pretrained(
            run / "student", safety_checker=None, requires_safety_checker=False, local_files_only=True
        )
    except Exception as err:  # diffusers/transformers raise many types for a broken dir
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConfigError(f"could not load the student from {run / 'student'}: {first_line}") from err
    unet_cfg, cn_cfg = pipeline.unet.config, pipeline.controlnet.config
    unsupported = [
        (getattr(unet_cfg, "time_cond_proj_dim", None) is not None, "a guidance-embedding UNet (time_cond_proj_dim)"),
        (getattr(unet_cfg, "addition_embed_type", None) is not None, "added conditioning (SDXL-style)"),
        (getattr(cn_cfg, "global_pool_conditions", False), "a ControlNet with global_pool_conditions"),
    ]
    for bad, what in unsupported:
        if bad:
            raise ExportError(f"the student uses {what}, which the fused denoiser graph does not support yet")
    for part in (pipeline.unet, pipeline.controlnet, pipeline.vae, pipeline.text_encoder):
        part.eval().requires_grad_(False)
    return Student(run, config, pipeline)


class TextEncoderGraph(nn.Module):
    """input_ids (B, L) int64 → last_hidden_state (B, L, D), as the pipeline's `encode_prompt` uses it."""

    def __init__(self, text_encoder: nn.Module) -> None:
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(input_ids, return_dict=False)[0]


class VaeDecoderGraph(nn.Module):
    """latent_sample (B, C, h, w), already divided by the scaling factor → image (B, 3, H, W) in [-1, 1]."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latent_sample: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latent_sample, return_dict=False)[0]


def _param_bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def export_graph(
    module: nn.Module,
    example: tuple[torch.Tensor, ...],
    path: Path,
    spec: GraphSpec,
    *,
    exporter: str,
    opset: int,
    dynamic_shapes: dict[str, Any] | None = None,
) -> None:
    """Export `module` to `path` with the spec's names and dynamic axes; `ExportError` on failure."""
    external = _param_bytes(module) > EXTERNAL_DATA_BYTES
    chatter = io.StringIO()  # the dynamo exporter prints its progress to stdout
    try:
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(chatter):
            warnings.simplefilter("ignore", category=DeprecationWarning)
            warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
            if exporter == "dynamo":
                torch.onnx.export(
                    module,
                    example,
                    str(path),
                    dynamo=True,
                    opset_version=opset,
                    input_names=list(spec.inputs),
                    output_names=list(spec.outputs),
                    dynamic_shapes=dynamic_shapes,
                    external_data=external,
                    optimize=True,
                )
            else:
                torch.onnx.export(
                    module,
                    example,
                    str(path),
                    dynamo=False,
                    opset_version=opset,
                    input_names=list(spec.inputs),
                    output_names=list(spec.outputs),
                    dynamic_axes=dict(spec.dynamic_axes),
                )
    except Exception as err:  # the exporters raise many types; keep the first line, chain the rest
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        logger.debug("exporter output:\n%s", chatter.getvalue())
        raise ExportError(
            f"exporting {spec.name} with the {exporter} exporter failed: {first_line[:400]}",
            hint="run with -v for the exporter's log; `--exporter torchscript` is a fallback",
        ) from err
    if not external:
        strip_debug_info(path)
    logger.debug("%s exported to %s (%d bytes)", spec.name, path.name, path.stat().st_size)


def strip_debug_info(path: Path) -> None:
    """Drop per-node doc strings and metadata (the dynamo exporter stores Python stack traces there: on a tiny
    student they are most of the file)."""
    import onnx

    model = onnx.load(str(path))
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    onnx.save(model, str(path))


def export_text_encoder(student: Student, path: Path, exporter: str, opset: int) -> None:
    from torch.export import Dim

    tokenizer = student.pipeline.tokenizer
    ids = torch.randint(0, len(tokenizer), (2, tokenizer.model_max_length), dtype=torch.int64)
    shapes = {"input_ids": {0: Dim("batch")}}
    module = TextEncoderGraph(student.pipeline.text_encoder).eval()
    export_graph(module, (ids,), path, TEXT_ENCODER, exporter=exporter, opset=opset, dynamic_shapes=shapes)


def _example_latent_size(student: Student) -> int:
    """A latent size for the example inputs: the trained one, but at least 2 × the downsampling (dynamo
    specialises dimensions whose example value is 1)."""
    size = student.resolution // student.vae_scale_factor
    return max(size - size % student.downsampling, 2 * student.downsampling)


def export_denoiser(student: Student, path: Path, exporter: str, opset: int) -> None:
    from torch.export import Dim

    pipe = student.pipeline
    latent = _example_latent_size(student)
    image = latent * student.vae_scale_factor
    example = (
        torch.randn(2, pipe.unet.config.in_channels, latent, latent),
        torch.full((2,), 500.0),
        torch.randn(2, pipe.tokenizer.model_max_length, pipe.unet.config.cross_attention_dim),
        torch.rand(2, pipe.controlnet.config.conditioning_channels, image, image),
        torch.tensor(1.0),
    )
    batch, h, w = Dim("batch"), Dim("h"), Dim("w")
    m, f = student.downsampling, student.vae_scale_factor
    shapes = {
        "sample": {0: batch, 2: m * h, 3: m * w},
        "timestep": {0: batch},
        "encoder_hidden_states": {0: batch},
        "controlnet_cond": {0: batch, 2: f * m * h, 3: f * m * w},
        "conditioning_scale": None,
    }
    export_graph(student.denoiser(), example, path, DENOISER, exporter=exporter, opset=opset, dynamic_shapes=shapes)


def export_vae_decoder(student: Student, path: Path, exporter: str, opset: int) -> None:
    from torch.export import Dim

    vae = student.pipeline.vae
    latent = _example_latent_size(student)
    example = (torch.randn(2, vae.config.latent_channels, latent, latent + student.downsampling),)
    # An explicit batch Dim fails on the VAE (a guard on batch <= 2 in diffusers' decoder); AUTO works.
    shapes = {"latent_sample": {0: Dim.AUTO, 2: Dim.AUTO, 3: Dim.AUTO}}
    module = VaeDecoderGraph(vae).eval()
    export_graph(module, example, path, VAE_DECODER, exporter=exporter, opset=opset, dynamic_shapes=shapes)
