"""The model dir's fixed names, shared by the exporter and the runtime: files, graphs and their inputs/outputs."""

MANIFEST = "manifest.json"
PARITY = "parity.json"
SCHEDULER = "scheduler.json"
TOKENIZER = "tokenizer/tokenizer.json"
FORMAT = "refine-control-onnx"
FORMAT_VERSION = 1

GRAPHS = ("text_encoder", "denoiser", "vae_decoder")
PRECISIONS = ("fp32", "int8", "fp16")
MODEL_FORMATS = ("onnx", "ort")

# Graph inputs and outputs, in order. Shapes: B batch (2 with classifier-free guidance), L tokens (77), D text
# width, C latent channels, h×w latent size, H×W image size (= vae_scale_factor × h, w).
TEXT_ENCODER_INPUTS = ("input_ids",)  # (B, L) int64
TEXT_ENCODER_OUTPUTS = ("last_hidden_state",)  # (B, L, D) float32
DENOISER_INPUTS = (
    "sample",  # (B, C, h, w) float32, already scaled by the scheduler
    "timestep",  # (B,) float32
    "encoder_hidden_states",  # (B, L, D) float32
    "controlnet_cond",  # (B, 3, H, W) float32, the control image in the preprocessor's range
    "conditioning_scale",  # () float32, multiplies every ControlNet residual
)
# Only a guidance-distilled (few-step) student's denoiser has this last input: (B,) float32, the guidance scale it
# was trained to reproduce in one pass (no classifier-free-guidance batch of 2).
GUIDANCE_INPUT = "guidance_scale"
DENOISER_OUTPUTS = ("noise_pred",)  # (B, C, h, w) float32
VAE_DECODER_INPUTS = ("latent_sample",)  # (B, C, h, w) float32, already divided by the VAE scaling factor
VAE_DECODER_OUTPUTS = ("sample",)  # (B, 3, H, W) float32 in [-1, 1]


def graph_file(graph: str, precision: str = "fp32", model_format: str = "onnx") -> str:
    """The fixed file name of a graph: `denoiser.onnx`, `denoiser.int8.onnx`, `vae_decoder.ort`, ..."""
    if graph not in GRAPHS or precision not in PRECISIONS or model_format not in MODEL_FORMATS:
        raise ValueError(f"no such graph file: {graph} {precision} {model_format}")
    return f"{graph}{'' if precision == 'fp32' else '.' + precision}.{model_format}"
