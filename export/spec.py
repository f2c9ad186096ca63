"""What each exported graph looks like: names, dynamic axes and the opset (optimum's `OnnxConfig` idea, small).

Names and file layout are shared with the runtime (`refine_control.serve.runtime.layout`), so the exporter and
the loader cannot drift apart.
"""

from dataclasses import dataclass

from refine_control.serve.runtime.layout import (
    DENOISER_INPUTS,
    DENOISER_OUTPUTS,
    TEXT_ENCODER_INPUTS,
    TEXT_ENCODER_OUTPUTS,
    VAE_DECODER_INPUTS,
    VAE_DECODER_OUTPUTS,
)

DEFAULT_OPSET = 18


@dataclass(frozen=True)
class GraphSpec:
    """One graph: input/output names and, per input and output name, its dynamic axes (axis → symbolic name)."""

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    dynamic_axes: dict[str, dict[int, str]]
    atol: float  # FP32 parity bound against PyTorch (max abs error) on real inputs


TEXT_ENCODER = GraphSpec(
    "text_encoder",
    TEXT_ENCODER_INPUTS,
    TEXT_ENCODER_OUTPUTS,
    {"input_ids": {0: "batch"}, "last_hidden_state": {0: "batch"}},
    atol=1e-3,
)
DENOISER = GraphSpec(
    "denoiser",
    DENOISER_INPUTS,
    DENOISER_OUTPUTS,
    {
        "sample": {0: "batch", 2: "height", 3: "width"},
        "timestep": {0: "batch"},
        "encoder_hidden_states": {0: "batch"},
        "controlnet_cond": {0: "batch", 2: "image_height", 3: "image_width"},
        "noise_pred": {0: "batch", 2: "height", 3: "width"},
    },
    atol=1e-3,
)
VAE_DECODER = GraphSpec(
    "vae_decoder",
    VAE_DECODER_INPUTS,
    VAE_DECODER_OUTPUTS,
    {
        "latent_sample": {0: "batch", 2: "height", 3: "width"},
        "sample": {0: "batch", 2: "image_height", 3: "image_width"},
    },
    atol=1e-3,
)
SPECS = {spec.name: spec for spec in (TEXT_ENCODER, DENOISER, VAE_DECODER)}
