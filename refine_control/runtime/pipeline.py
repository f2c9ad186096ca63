"""`OnnxControlNetPipeline`: text + control image → image with ONNX Runtime and numpy only (no torch).

It reproduces diffusers' `StableDiffusionControlNetPipeline` (classifier-free guidance as a batch of 2, the
ControlNet applied to both halves, the same scheduler arithmetic), so an exported student draws the same image
as the PyTorch one for the same prompt, control image and initial noise; `refine-export` checks exactly that.
"""

import json
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from refine_control.errors import ConfigError, RefineError
from refine_control.runtime.clip_tokenizer import ClipTokenizer
from refine_control.runtime.cpu import int8_cpu_warning
from refine_control.runtime.geometry import Geometry
from refine_control.runtime.layout import (
    GRAPHS,
    MODEL_FORMATS,
    SCHEDULER,
    TEXT_ENCODER_INPUTS,
    TOKENIZER,
    VAE_DECODER_INPUTS,
    graph_file,
)
from refine_control.runtime.model_dir import ModelDir, ModelDirError, VerifiedGraph
from refine_control.runtime.sampling import recommendation_or_default
from refine_control.runtime.schedulers import LCM, SCHEDULERS, NumpyScheduler, make_scheduler, scheduler_key
from refine_control.runtime.session import default_threads, ort_session

logger = logging.getLogger(__name__)

StepCallback = Callable[[int, int], None]


class CancelToken(Protocol):
    def is_set(self) -> bool: ...


class CancelledError(RefineError):
    """Generation stopped because the cancel event was set."""


def create_session(graph: VerifiedGraph, num_threads: int | None = None) -> Any:
    """A session on a verified graph (its checked bytes when the manifest made a copy, else its path)."""
    config = {"session.load_model_format": "ORT"} if graph.path.suffix == ".ort" else None
    try:
        return ort_session(graph.data if graph.data is not None else graph.path, threads=num_threads, config=config)
    except ConfigError:
        raise
    except Exception as err:  # onnxruntime raises its own exception types (Fail, InvalidGraph, ...)
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ModelDirError(f"ONNX Runtime cannot load {graph.path.name}: {first_line[:300]}") from err


class PromptEncoder:
    """CLIP tokenisation, padded / truncated to the text encoder's length: the pure-Python `ClipTokenizer` for the
    layout CLIP's tokenizer.json has (the device install carries no `tokenizers`), else the `tokenizers` library."""

    def __init__(self, tokenizer_json: bytes, max_length: int, pad_id: int) -> None:
        self.max_length = max_length
        try:
            spec = json.loads(tokenizer_json.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ModelDirError(f"tokenizer/tokenizer.json is not JSON: {err}") from err
        if isinstance(spec, dict) and ClipTokenizer.supports(spec):
            clip = ClipTokenizer(spec, max_length, pad_id)
            self._encode: Callable[[list[str]], list[list[int]]] = lambda prompts: [clip.encode(p) for p in prompts]
            return
        try:
            from tokenizers import Tokenizer
        except ImportError as err:
            raise ModelDirError(
                "tokenizer/tokenizer.json is not CLIP's tokenizer layout, and the `tokenizers` library is not installed",
                hint="pip install tokenizers",
            ) from err
        tokenizer = Tokenizer.from_str(tokenizer_json.decode("utf-8"))
        tokenizer.enable_truncation(max_length)
        tokenizer.enable_padding(length=max_length, pad_id=pad_id)
        self._encode = lambda prompts: [e.ids for e in tokenizer.encode_batch(prompts)]

    def __call__(self, prompts: list[str]) -> np.ndarray:
        """(B, max_length) int64 token ids."""
        return np.asarray(self._encode(prompts), dtype=np.int64)


def _control_array(control_image: Any, width: int, height: int) -> np.ndarray:
    """(1, 3, H, W) float32: uint8 images are scaled to [0, 1]; float images are taken as they are."""
    from PIL import Image

    if isinstance(control_image, Image.Image):
        control_image = np.asarray(control_image.convert("RGB"))
    array = np.asarray(control_image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3 or array.shape[0] < 1 or array.shape[1] < 1:
        raise ConfigError(f"the control image must be (H, W, 3) or (H, W), got shape {array.shape}")
    if array.dtype == np.uint8:
        if array.shape[:2] != (height, width):
            array = np.asarray(Image.fromarray(array).resize((width, height), Image.Resampling.LANCZOS))
        array = array.astype(np.float32) / 255.0
    elif np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float32)
        if not np.isfinite(array).all():
            raise ConfigError("the control image holds NaN or infinite values")
        if array.shape[:2] != (height, width):
            array = np.stack(
                [
                    np.asarray(
                        Image.fromarray(np.ascontiguousarray(array[..., c])).resize(
                            (width, height), Image.Resampling.BILINEAR
                        )
                    )
                    for c in range(3)
                ],
                axis=2,
            )
    else:
        raise ConfigError(f"the control image must be uint8 or float, got {array.dtype}")
    return np.ascontiguousarray(array.transpose(2, 0, 1)[None])


class OnnxControlNetPipeline:
    """Generate images from an exported model dir with ONNX Runtime (no torch).

    Args:
        model_dir: a `refine-export` output dir. Its manifest is read at once; every graph, the tokenizer and the
            scheduler config are checked against the manifest's sha256 before use (`ModelDirError`, exit code 2,
            names the file that is missing, truncated, corrupted, or points outside the dir).
        precision: which denoiser to run: "fp32", "int8" or "fp16" (those exported; see `available_precisions`), or
            "auto" for the fastest that passed parity (`ModelDir.fastest_precision`).
            The text encoder and VAE decoder run in FP32 unless the dir holds graphs of that precision too.
        scheduler: None for the model's own scheduler (DDIM if it has no numpy version, with a warning), or one
            of "ddim", "euler", "euler_ancestral", "lcm", built from the model's noise schedule.
        model_format: "onnx" or "ort" (ONNX Runtime's mobile format, written by `refine-export --ort`).
        num_threads: intra-op threads per session (default: the CPUs this process may use).
        manifest: for the exporter only: check the files against this in-memory manifest instead of reading
            `manifest.json` (which an export writes last).

    Calling the pipeline:
        image = pipe(prompt, control_image, negative_prompt="", steps=None, guidance_scale=None,
                     controlnet_scale=1.0, seed=0, width=None, height=None, callback=None, cancel=None)

        - steps / guidance_scale: None for the model's recommendation (`manifest.json` → `recommended_sampling`:
          e.g. 4 steps at scale 3 for a few-step student, 20 at 3 for a guided one). A scale outside the range a
          guidance-distilled student was trained on (`recommended_sampling.guidance_range`) is refused.

        - control_image: (H, W, 3) or (H, W) numpy array or PIL image. uint8 is scaled to [0, 1]; float arrays are
          used as given (the preprocessor's output range, e.g. [0, 1] edges). It is resized to (height, width).
        - width / height: default to the model's trained resolution; must be multiples of
          `size_multiple` (the VAE factor times the UNet's downsampling).
        - guidance_scale > 1 runs classifier-free guidance as one batch of 2 (negative prompt, prompt), except for a
          guidance-distilled student (`geometry.guidance_embedded`), whose denoiser reads the scale as an input and
          runs one batch-1 pass per step; the negative prompt is then unused, as in diffusers.
        - seed: the initial noise is `numpy.random.default_rng(seed).standard_normal((1, C, h, w))`, times the
          scheduler's `init_noise_sigma`; stochastic schedulers draw later noise from the same generator. The
          same arguments always give the same image.
        - callback(done, total) is called after every denoising step (done = 1..total), from the calling thread.
        - cancel: any object with `is_set()` (e.g. `threading.Event`); checked before every step and before
          decoding; when set, `CancelledError` is raised.

        Returns an (height, width, 3) uint8 RGB array.

    One pipeline may serve several threads: sessions are thread-safe and each call builds its own scheduler.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        precision: str = "fp32",
        *,
        scheduler: str | None = None,
        model_format: str = "onnx",
        num_threads: int | None = None,
        manifest: dict[str, Any] | None = None,
    ) -> None:
        if model_format not in MODEL_FORMATS:
            raise ConfigError(f"`model_format` must be one of {', '.join(MODEL_FORMATS)}, got {model_format!r}")
        self.model = ModelDir(model_dir, manifest)
        if precision == "auto":
            precision = self.model.fastest_precision(model_format)
        available = self.model.precisions(model_format)
        if precision not in available:
            raise ModelDirError(
                f"{self.model.path} has no {precision} denoiser in {model_format} format; "
                f"available: {', '.join(available) or 'none'}"
            )
        self.precision, self.model_format = precision, model_format
        if precision == "int8":
            warning = int8_cpu_warning(self.model.quantization())
            if warning:
                logger.warning("%s: %s", self.model.path, warning)
        facts = self.model.pipeline
        try:
            self.geometry = Geometry.from_facts(facts)
            self.vae_scaling_factor = float(facts["vae_scaling_factor"])
            self.vae_shift_factor = float(facts.get("vae_shift_factor") or 0.0)
            pad_id = int(facts["pad_token_id"])
            # The model's recommendation (its student/sampling.json, copied at export); the documented default
            # with a warning for a dir exported before recommendations were written.
            self.sampling = recommendation_or_default(facts.get("recommended_sampling"), f"{self.model.path}")
            self.default_steps = self.sampling.steps
            self.default_guidance_scale = self.sampling.guidance_scale
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ModelDirError(f"{self.model.path}/manifest.json lacks pipeline fact {err}") from err
        self.resolution, self.size_multiple = self.geometry.resolution, self.geometry.size_multiple
        self.scheduler_config = self._read_scheduler_config()
        self.scheduler_name = self._pick_scheduler(scheduler)
        make_scheduler(self.scheduler_config, self.scheduler_name)  # fail now on an unsupported config
        self.prompt_encoder = PromptEncoder(self.model.read_verified(TOKENIZER), self.geometry.text_max_length, pad_id)
        self.num_threads = num_threads or default_threads()
        self.graph_files = {graph: self._graph_file(graph) for graph in GRAPHS}
        self.sessions = {
            graph: create_session(self.model.verify_graph(name), self.num_threads)
            for graph, name in self.graph_files.items()
        }
        for graph, session in self.sessions.items():  # a foreign graph whose hash was made to match
            names = tuple(i.name for i in session.get_inputs())
            if names != self.geometry.inputs(graph):
                raise ModelDirError(
                    f"{self.graph_files[graph]} is not this model's {graph} graph: its inputs are {list(names)}, "
                    f"the manifest's geometry needs {list(self.geometry.inputs(graph))}"
                )

    # ----------------------------------------------------------------------------------------- loading
    def _read_scheduler_config(self) -> dict[str, Any]:
        import json

        try:
            config = json.loads(self.model.read_verified(SCHEDULER).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ModelDirError(f"{SCHEDULER} is not valid JSON ({err})") from err
        if not isinstance(config, dict):
            raise ModelDirError(f"{SCHEDULER} must hold a JSON object")
        return config

    def _pick_scheduler(self, requested: str | None) -> str:
        if requested is not None:
            if requested not in SCHEDULERS:
                raise ConfigError(f"unknown scheduler {requested!r}; choose one of: {', '.join(SCHEDULERS)}")
            return requested
        class_name = str(self.scheduler_config.get("_class_name"))
        key = scheduler_key(class_name)
        if key is None:
            logger.warning("the model's scheduler %s has no numpy version; sampling with DDIM", class_name)
            return "ddim"
        return key

    def _graph_file(self, graph: str) -> str:
        name = graph_file(graph, self.precision, self.model_format)
        return name if self.model.has(name) else graph_file(graph, "fp32", self.model_format)

    @property
    def available_precisions(self) -> list[str]:
        return self.model.precisions(self.model_format)

    @property
    def max_steps(self) -> int:
        """The most steps the scheduler can take (an LCM one: its grid timesteps at or below the start)."""
        scheduler = make_scheduler(self.scheduler_config, self.scheduler_name)
        if isinstance(scheduler, LCM):
            return len(scheduler.grid(self.sampling.first_timestep))
        return scheduler.num_train_timesteps

    def new_scheduler(self, steps: int) -> NumpyScheduler:
        """A fresh scheduler with the timesteps of `steps` steps (an LCM one from the recommended first timestep)."""
        scheduler = make_scheduler(self.scheduler_config, self.scheduler_name)
        if isinstance(scheduler, LCM):
            scheduler.set_timesteps(steps, self.sampling.first_timestep)
        else:
            scheduler.set_timesteps(steps)
        return scheduler

    # ----------------------------------------------------------------------------------------- running
    def run_graph(self, graph: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Run one graph (the single place sessions run; the exporter subclasses it to capture inputs)."""
        return self.sessions[graph].run(None, feeds)[0]

    def encode_prompts(self, prompts: list[str]) -> np.ndarray:
        """(B, L, D) text embeddings."""
        ids = self.prompt_encoder(prompts)
        return self.run_graph("text_encoder", {TEXT_ENCODER_INPUTS[0]: ids})

    def initial_noise(self, seed: int, height: int, width: int) -> np.ndarray:
        """The unscaled initial latents for `seed`: (1, C, h, w) standard normal float32."""
        shape = self.geometry.latent_shape(height, width)
        return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """(1, C, h, w) latents → (H, W, 3) uint8, as diffusers' VAE decode + postprocess."""
        scaled = latents / self.vae_scaling_factor + self.vae_shift_factor
        image = self.run_graph("vae_decoder", {VAE_DECODER_INPUTS[0]: scaled.astype(np.float32)})[0]
        image = np.clip(image / 2 + 0.5, 0.0, 1.0).transpose(1, 2, 0)
        return (image * 255).round().astype(np.uint8)

    def _check_size(self, width: int | None, height: int | None) -> tuple[int, int]:
        width = self.resolution if width is None else width
        height = self.resolution if height is None else height
        for name, value in (("width", width), ("height", height)):
            if not isinstance(value, int) or value < self.size_multiple or value % self.size_multiple:
                raise ConfigError(f"`{name}` must be a positive multiple of {self.size_multiple}, got {value!r}")
        return width, height

    def __call__(
        self,
        prompt: str,
        control_image: Any,
        negative_prompt: str = "",
        *,
        steps: int | None = None,
        guidance_scale: float | None = None,
        controlnet_scale: float = 1.0,
        seed: int = 0,
        width: int | None = None,
        height: int | None = None,
        callback: StepCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> np.ndarray:
        """Generate one image; see the class docstring. Returns (height, width, 3) uint8."""
        width, height = self._check_size(width, height)
        steps = self.default_steps if steps is None else steps
        guidance_scale = self.default_guidance_scale if guidance_scale is None else guidance_scale
        if not isinstance(steps, int) or steps < 1:
            raise ConfigError(f"`steps` must be a positive integer, got {steps!r}")
        for name, value in (("guidance_scale", guidance_scale), ("controlnet_scale", controlnet_scale)):
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"`{name}` must be a finite number, got {value!r}")
        if (message := self.sampling.guidance_error(guidance_scale)) is not None:
            raise ConfigError(f"{message}, got {guidance_scale}")
        if not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"`seed` must be a non-negative integer, got {seed!r}")
        if not isinstance(prompt, str) or not isinstance(negative_prompt, str):
            raise ConfigError("`prompt` and `negative_prompt` must be strings")

        scheduler = self.new_scheduler(steps)
        # A guidance-distilled student reads the scale as an input: one pass, no pair (as diffusers decides).
        guided = guidance_scale > 1.0 and not self.geometry.guidance_embedded
        embeddings = self.encode_prompts([negative_prompt, prompt] if guided else [prompt])
        control = _control_array(control_image, width, height)
        batch = embeddings.shape[0]
        control = np.repeat(control, batch, axis=0)

        rng = np.random.default_rng(seed)
        shape = self.geometry.latent_shape(height, width)
        latents = rng.standard_normal(shape, dtype=np.float32) * np.float32(scheduler.init_noise_sigma)
        total = len(scheduler.timesteps)
        for i, t in enumerate(scheduler.timesteps):
            if cancel is not None and cancel.is_set():
                raise CancelledError(f"generation cancelled before step {i + 1} of {total}")
            model_in = scheduler.scale_model_input(np.repeat(latents, batch, axis=0), i)
            timestep = np.full((batch,), t, np.float32)
            feeds = self.geometry.denoiser_feeds(
                model_in, timestep, embeddings, control, controlnet_scale, guidance_scale
            )
            noise = self.run_graph("denoiser", feeds)
            if guided:
                uncond, text = noise[:1], noise[1:]
                noise = uncond + np.float32(guidance_scale) * (text - uncond)
            latents = scheduler.step(noise, i, latents, rng=rng)
            if callback is not None:
                callback(i + 1, total)
        if cancel is not None and cancel.is_set():
            raise CancelledError("generation cancelled before decoding")
        return self.decode(latents)

    def info(self) -> dict[str, Any]:
        """What the server may show about the loaded model (no paths beyond the dir's name)."""
        return {
            "name": Path(self.model.path).name,
            "precision": self.precision,
            "available_precisions": self.available_precisions,
            "model_format": self.model_format,
            "scheduler": self.scheduler_name,
            "recommended_steps": self.default_steps,
            "recommended_guidance_scale": self.default_guidance_scale,
            "guidance_range": None if self.sampling.guidance_range is None else list(self.sampling.guidance_range),
            "guidance_embedded": self.geometry.guidance_embedded,
            "resolution": self.resolution,
            "size_multiple": self.size_multiple,
            "preprocessor": self.model.pipeline.get("preprocessor"),
        }
