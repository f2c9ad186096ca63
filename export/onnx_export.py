"""Load a distilled student from a run dir and export its three graphs with `torch.onnx.export`.

`denoiser.onnx` is `ControlledDenoiser` itself: one fused graph with the ControlNet's residuals scaled by the
`conditioning_scale` input and wired into the UNet. optimum cannot export this (its UNet config has no residual
inputs), so the graphs are exported directly. The default exporter is the dynamo one (`torch.export`); its
dynamic spatial axes need divisibility constraints (latent size a multiple of the UNet's total downsampling,
control image = VAE factor × latent size). The TorchScript exporter is kept as a fast, deprecated fallback.
"""

import contextlib
import io
import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from refine_control.errors import ExportError
from refine_control.export.spec import SPECS, GraphSpec
from refine_control.models.denoiser import ControlledDenoiser
from refine_control.runtime.geometry import Geometry
from refine_control.runtime.layout import graph_file

logger = logging.getLogger(__name__)

# Above this many parameter bytes a graph is written with external data (protobuf's 2 GiB limit).
EXTERNAL_DATA_BYTES = 1_800_000_000


@dataclass
class Student:
    """The run's student pipeline (a diffusers `StableDiffusionControlNetPipeline`) and its geometry."""

    run: Path
    config: dict[str, Any]
    pipeline: Any

    @property
    def geometry(self) -> Geometry:
        return Geometry.from_pipeline(self.pipeline, self.config.get("resolved", {}).get("resolution"))

    def denoiser(self) -> ControlledDenoiser:
        return ControlledDenoiser(self.pipeline.unet, self.pipeline.controlnet).eval()

    def graph_module(self, graph: str) -> nn.Module:
        """The module exported as `graph`."""
        if graph == "text_encoder":
            return TextEncoderGraph(self.pipeline.text_encoder).eval()
        if graph == "vae_decoder":
            return VaeDecoderGraph(self.pipeline.vae).eval()
        return self.denoiser()


def load_student(run: Path, config: dict[str, Any]) -> Student:
    """Load RUN/student with diffusers (local files only) and refuse features the fused graph does not carry."""
    from refine_control.models.pipeline_dir import load_pipeline

    pipeline = load_pipeline(run / "student")
    unet_cfg, cn_cfg = pipeline.unet.config, pipeline.controlnet.config
    unsupported = [
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
    geometry: Geometry,
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
            names = {"input_names": list(geometry.inputs(spec.name)), "output_names": list(spec.outputs)}
            if exporter == "dynamo":
                specific = {"dynamic_shapes": dynamic_shapes, "external_data": external, "optimize": True}
            else:
                specific = {"dynamic_axes": spec.axes(geometry)}
            torch.onnx.export(
                module, example, str(path), dynamo=exporter == "dynamo", opset_version=opset, **names, **specific
            )
    except OSError:  # the file could not be written (a full disk): atomic_dir reports it, naming the model dir
        raise
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


def export_graphs(
    student: Student, out_dir: Path, exporter: str, opset: int, graphs: Sequence[str] = tuple(SPECS)
) -> None:
    """Write the student's FP32 `graphs` (default: all three) into `out_dir` (`graph_file` names), from its
    geometry's example inputs and dynamic shapes."""
    geometry = student.geometry
    for graph in graphs:
        spec = SPECS[graph]
        started = time.perf_counter()
        example = tuple(torch.from_numpy(v) for v in geometry.example_feeds(graph).values())
        shapes = spec.dynamic_shapes(geometry) if exporter == "dynamo" else None
        export_graph(
            student.graph_module(graph), example, out_dir / graph_file(graph), spec, geometry, exporter, opset, shapes
        )
        logger.info("%s exported (%s exporter, %.1f s)", graph, exporter, time.perf_counter() - started)
