"""What each exported graph looks like: output names, dynamic axes and the parity bound (optimum's `OnnxConfig`
idea, small). Input names and example inputs come from the model's `Geometry` (refine_control/runtime/geometry.py), which
the runtime reads back from the manifest, so the exporter and the loader cannot drift apart.
"""

from dataclasses import dataclass
from typing import Any

from refine_control.runtime.geometry import Geometry
from refine_control.runtime.layout import (
    DENOISER_OUTPUTS,
    GUIDANCE_INPUT,
    TEXT_ENCODER_OUTPUTS,
    VAE_DECODER_OUTPUTS,
)

DEFAULT_OPSET = 18
EXPORTERS = ("dynamo", "torchscript")  # torch.onnx's two; dynamo is the default, TorchScript a fast fallback
INT8_OP_TYPES = ("Conv", "MatMul", "Gemm")  # node types the INT8 quantiser may quantise (chosen per node)
INT8_CALIBRATIONS = ("percentile", "minmax", "entropy")  # activation range methods (onnxruntime's calibraters)


@dataclass(frozen=True)
class GraphSpec:
    """One graph: its outputs and, per input or output name, the dynamic axes (axis → symbolic name) that the
    TorchScript exporter takes; `dynamic_shapes` gives the dynamo exporter's equivalent."""

    name: str
    outputs: tuple[str, ...]
    dynamic_axes: dict[str, dict[int, str]]
    atol: float  # FP32 parity bound against PyTorch (max abs error) on real inputs

    def axes(self, geometry: Geometry) -> dict[str, dict[int, str]]:
        names = (*geometry.inputs(self.name), *self.outputs)
        return {k: v for k, v in self.dynamic_axes.items() if k in names}

    def dynamic_shapes(self, geometry: Geometry) -> dict[str, Any]:
        """`torch.export` dynamic shapes: batch and spatial sides free, spatial sides tied to the downsampling
        (latent side a multiple of it, control image side = VAE factor × latent side)."""
        from torch.export import Dim

        if self.name == "text_encoder":
            return {"input_ids": {0: Dim("batch")}}
        if self.name == "vae_decoder":
            # An explicit batch Dim fails on the VAE (a guard on batch <= 2 in diffusers' decoder); AUTO works.
            return {"latent_sample": {0: Dim.AUTO, 2: Dim.AUTO, 3: Dim.AUTO}}
        batch, h, w = Dim("batch"), Dim("h"), Dim("w")
        m, f = geometry.downsampling, geometry.vae_scale_factor
        shapes: dict[str, Any] = {
            "sample": {0: batch, 2: m * h, 3: m * w},
            "timestep": {0: batch},
            "encoder_hidden_states": {0: batch},
            "controlnet_cond": {0: batch, 2: f * m * h, 3: f * m * w},
            "conditioning_scale": None,
        }
        if geometry.guidance_embedded:
            shapes[GUIDANCE_INPUT] = {0: batch}
        return shapes


TEXT_ENCODER = GraphSpec(
    "text_encoder",
    TEXT_ENCODER_OUTPUTS,
    {"input_ids": {0: "batch"}, "last_hidden_state": {0: "batch"}},
    atol=1e-3,
)
DENOISER = GraphSpec(
    "denoiser",
    DENOISER_OUTPUTS,
    {
        "sample": {0: "batch", 2: "height", 3: "width"},
        "timestep": {0: "batch"},
        "encoder_hidden_states": {0: "batch"},
        "controlnet_cond": {0: "batch", 2: "image_height", 3: "image_width"},
        GUIDANCE_INPUT: {0: "batch"},
        "noise_pred": {0: "batch", 2: "height", 3: "width"},
    },
    atol=1e-3,
)
VAE_DECODER = GraphSpec(
    "vae_decoder",
    VAE_DECODER_OUTPUTS,
    {
        "latent_sample": {0: "batch", 2: "height", 3: "width"},
        "sample": {0: "batch", 2: "image_height", 3: "image_width"},
    },
    atol=1e-3,
)
SPECS = {spec.name: spec for spec in (TEXT_ENCODER, DENOISER, VAE_DECODER)}
