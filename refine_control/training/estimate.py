"""What a `refine-distill` run will cost, before it starts: parameters, MACs, a memory estimate and a lower bound
on the time per step, all from the teacher's and student's configs built on the meta device (no weights loaded,
nothing written). `refine-distill --dry-run` prints it; a normal run refuses to start when the memory estimate
exceeds the machine's memory.

The memory estimate, per process and per stage (the largest stage counts), in bytes:
- frozen teacher weights (UNet, ControlNet, VAE, text encoder): parameters × 4 (fp32) or × 2 (bf16/fp16 mixed
  precision, where the teacher is loaded in that dtype);
- trained student weights: parameters × 16 (fp32 weight + gradient + AdamW's two moments); + 4 per parameter for
  an EMA copy (`--ema-decay`) or the few-step stage's target network;
- activations: the bytes of every operator output of one student forward at batch 1 (what autograd may keep for
  the backward pass, an upper bound) × batch, in the mixed-precision dtype; plus, for the frozen models that run
  without gradients (teacher denoiser, VAE encoder), 4 × their largest single operator output × batch;
- an allowance of 2 GiB: 1 GiB for the Python process and its libraries, 1 GiB for the latent cache
  (`LATENT_CACHE_BYTES`). The loss's feature projectors (small 1×1 convolutions) are not counted.

The time per step is a lower bound: the step's MACs (teacher forward + student forward and backward, counted as
3 × its forward, per sample) at this machine's measured rate for a dense 1024² matmul in the mixed-precision dtype.
On CPUs convolutions and attention run below that rate, so real steps are slower (on a GPU large kernels can beat
a 1024² matmul: a rough estimate there); `refine-distill` logs the measured seconds per step once it runs.
"""

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from refine_control.errors import ConfigError
from refine_control.training.config import DistillConfig
from refine_control.training.scale import SCALES

GIB = 1 << 30
RUNTIME_ALLOWANCE = 2 * GIB  # Python + libraries (1 GiB) and the latent cache (1 GiB, LATENT_CACHE_BYTES)
# The formula undercounts: in the SD1.5 rehearsal at 256² (results/sd15/rehearsal-256.json) each command's measured
# peak RSS was 1.19–1.58× its estimate (fp32 1.35×, bf16 1.58×, few-step 1.38×). The cause is not pinned down, so
# the memory check plans for the formula times this margin rather than trusting the formula alone.
MEASURED_MARGIN = 1.6
FROZEN_PEAK_FACTOR = 4  # frozen forwards keep ~4 of their largest operator outputs alive at once
ADAMW_BYTES_PER_PARAM = 16  # fp32 weight + gradient + two moments


@dataclass
class MetaTeacher:
    """The teacher's components built on the meta device from its configs: shapes only, no weights."""

    path: Path
    unet: Any
    controlnet: Any
    vae: Any
    text_encoder: Any

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def resolution(self) -> int:
        return int(self.unet.config.sample_size) * self.vae_scale_factor


def _read_config(folder: Path, what: str) -> dict[str, Any]:
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"the teacher's {what} config {path} cannot be read ({err})") from err
    return {k: v for k, v in config.items() if not k.startswith("_")}


def meta_teacher(
    spec: str, controlnet: str | None = None, teacher_config: str | None = None, allow_pickle: bool = False
) -> MetaTeacher:
    """The teacher of `--teacher spec [--controlnet DIR]` on the meta device (reads only config files; of a
    single-file checkpoint, its config directory and at most the names and shapes of its tensors)."""
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from refine_control.models.single_file import controlnet_config_dir, is_single_file, teacher_config_dir
    from refine_control.models.teacher import _model_index, resolve_teacher_path

    if is_single_file(spec):
        path = teacher_config_dir(Path(spec).expanduser(), teacher_config, allow_pickle)
    else:
        path = resolve_teacher_path(spec)
        _model_index(path)
    cn_folder = Path(controlnet).expanduser() if controlnet else path / "controlnet"
    if is_single_file(controlnet):
        root, subfolder = controlnet_config_dir(cn_folder, teacher_config, path, allow_pickle)
        cn_folder = root / subfolder if subfolder else root
    if not (cn_folder / "config.json").is_file():
        raise ConfigError(
            f"no ControlNet config at {cn_folder}",
            hint="pass the ControlNet with --controlnet DIR (a base text-to-image pipeline plus a ControlNet works)",
        )
    configs = {name: _read_config(path / name, name) for name in ("unet", "vae", "text_encoder")}
    cn_config = _read_config(cn_folder, "controlnet")
    try:
        with torch.device("meta"):
            teacher = MetaTeacher(
                path,
                UNet2DConditionModel.from_config(configs["unet"]),
                ControlNetModel.from_config(cn_config),
                AutoencoderKL.from_config(configs["vae"]),
                CLIPTextModel(CLIPTextConfig(**configs["text_encoder"])),
            )
    except (TypeError, ValueError, KeyError) as err:
        raise ConfigError(f"the teacher's configs in {path} do not build its models ({err})") from err
    unet_width, cn_width = teacher.unet.config.cross_attention_dim, teacher.controlnet.config.cross_attention_dim
    if cn_width != unet_width:  # caught here, before a run writes anything or loads weights
        raise ConfigError(
            f"the ControlNet {controlnet or cn_folder} (cross_attention_dim={cn_width}) does not fit the UNet of "
            f"{spec} (cross_attention_dim={unet_width})",
            hint="pass a ControlNet trained for this base model",
        )
    return teacher


class _OutputBytes(TorchDispatchMode):
    """Sums the bytes of every operator output (views excluded) and keeps the largest one."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0
        self.largest = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if not getattr(func, "is_view", False):
            for value in tree_flatten(out)[0]:
                if isinstance(value, torch.Tensor):
                    size = value.numel() * value.element_size()
                    self.total += size
                    self.largest = max(self.largest, size)
        return out


def output_bytes(fn: Any, grad: bool) -> tuple[int, int]:
    """(sum, largest) bytes of the operator outputs of `fn()` in fp32, on meta tensors."""
    with torch.set_grad_enabled(grad), _OutputBytes() as counter:
        fn()
    return counter.total, counter.largest


def _count(*modules: Any) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


@dataclass
class StageCost:
    name: str
    steps: int
    learning_rate: float
    batch_size: int
    resolution: int
    trained_params: int
    memory: dict[str, int] = field(default_factory=dict)
    step_macs: int = 0  # per optimizer step, all micro-batches

    @property
    def memory_total(self) -> int:
        return sum(self.memory.values())


def measured_matmul_rate(device: torch.device, dtype: torch.dtype = torch.float32, seconds: float = 0.3) -> float:
    """Multiply-accumulates per second of a dense 1024² matmul in `dtype` on `device` (best of a short loop)."""
    n = 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best, deadline = math.inf, time.perf_counter() + seconds
    for _ in range(3):  # warm-up
        a @ b
    while time.perf_counter() < deadline or best == math.inf:
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return n**3 / best


def machine_memory() -> tuple[int, str]:
    """Bytes one training process may use here: the GPU's memory, or RAM (the cgroup limit when lower)."""
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return int(props.total_memory), f"GPU memory ({props.name})"
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit.isdigit() and int(limit) < total:
            return int(limit), "memory (cgroup limit)"
    except OSError:
        pass
    return total, "RAM"


def estimate(cfg: DistillConfig, teacher: MetaTeacher, macs: bool = True) -> dict[str, Any]:
    """Parameter and MAC counts of teacher and student, and each stage's steps, memory and MACs per step.

    `macs=False` skips the MAC counts (half the time; what the memory check before a run needs): the fast recipe's
    tiny-decoder stage, decided by MACs, is then counted whenever `--tiny-decoder-stage` is not `never`."""

    from refine_control.models.cost import decoder_macs, denoiser_macs, text_encoder_macs
    from refine_control.models.denoiser import ControlledDenoiser
    from refine_control.models.presets import STUDENT_PRESETS, build_student
    from refine_control.training.recipe import TINY_DECODER_MIN_GAIN
    from refine_control.training.tiny_decoder import build_tiny_vae

    size = cfg.resolution or teacher.resolution
    factor = teacher.vae_scale_factor
    mixed = cfg.mixed_precision != "no"
    weight_bytes = 2 if mixed else 4
    with torch.device("meta"):
        s_unet, s_cn = build_student(teacher.unet, teacher.controlnet, STUDENT_PRESETS.get(cfg.student))
        tiny = build_tiny_vae(teacher.vae, cfg.tiny_decoder_width)
    shares_unet = s_unet is teacher.unet
    t_step = s_step = text = decode = tiny_decode = encode = tiny_encode = 0
    if macs:
        t_step = denoiser_macs(teacher.unet, teacher.controlnet, size, factor)
        s_step = denoiser_macs(s_unet, s_cn, size, factor)
        text = text_encoder_macs(teacher.text_encoder)
        decode, tiny_decode = decoder_macs(teacher.vae, size), decoder_macs(tiny, size)
        encode, tiny_encode = _encoder_macs(teacher.vae, size), _encoder_macs(tiny, size)

    latent = size // factor
    with torch.device("meta"):
        student = ControlledDenoiser(s_unet, s_cn)
        teacher_denoiser = ControlledDenoiser(teacher.unet, teacher.controlnet)
        inputs = (
            torch.zeros(1, teacher.unet.config.in_channels, latent, latent),
            torch.zeros(1),
            torch.zeros(1, 77, teacher.unet.config.cross_attention_dim),
            torch.zeros(1, teacher.controlnet.config.conditioning_channels, size, size),
            1.0,
        )
        pixels = torch.zeros(1, teacher.vae.config.in_channels, size, size)
        s_act, _ = output_bytes(lambda: student(*inputs), grad=True)
        _, t_largest = output_bytes(lambda: teacher_denoiser(*inputs), grad=False)
        _, vae_largest = output_bytes(lambda: teacher.vae.encode(pixels), grad=False)
        latents = torch.zeros(1, teacher.vae.config.latent_channels, latent, latent)
        tiny_act = sum(
            output_bytes(fn, grad=True)[0] for fn in (lambda: tiny.decode(latents), lambda: tiny.encode(pixels))
        )
    act_scale = 0.5 if mixed else 1.0  # bf16/fp16 activations under autocast
    frozen_peak = FROZEN_PEAK_FACTOR * max(t_largest, vae_largest) * act_scale
    teacher_weights = _count(teacher.unet, teacher.controlnet, teacher.vae, teacher.text_encoder) * weight_bytes
    student_params = _count(s_cn) + (0 if shares_unet else _count(s_unet))
    trained = student_params  # controlnet-* presets train the ControlNet alone on the shared UNet
    micro = cfg.batch_size * cfg.grad_accum
    scale = SCALES[cfg.scale]

    def memory(trained_params: int, extra_copy: int, act: float) -> dict[str, int]:
        return {
            "teacher_weights": teacher_weights,
            "student_weights_grads_adamw": trained_params * ADAMW_BYTES_PER_PARAM,
            "ema_or_target_copy": extra_copy * 4,
            "activations": int(act * cfg.batch_size),
            "runtime_allowance": RUNTIME_ALLOWANCE,
        }

    stages: list[StageCost] = []
    steps2 = _stage2_steps(cfg)
    if not cfg.few_step and not cfg.tiny_decoder:
        compact = StageCost("compact" if cfg.recipe == "fast" else "distill", cfg.max_steps, cfg.learning_rate,
                            cfg.batch_size, size, trained)  # fmt: skip
        compact.memory = memory(trained, trained if cfg.ema_decay else 0, s_act * act_scale + frozen_peak)
        compact.step_macs = micro * (t_step + 3 * s_step)
        stages.append(compact)
        if steps2:
            stage2 = StageCost("stage 2", steps2, cfg.learning_rate * cfg.stage2_lr_scale, cfg.batch_size, size, 0)
            stage2.trained_params, stage2.memory, stage2.step_macs = trained, compact.memory, compact.step_macs
            stages.append(stage2)
    if cfg.few_step or (cfg.recipe == "fast" and not cfg.tiny_decoder and cfg.from_run is None):
        steps, rate = scale.objectives["few_step"]
        if cfg.few_step:
            steps, rate = cfg.max_steps, cfg.learning_rate
        elif cfg.few_step_steps is not None:
            steps = cfg.few_step_steps
        whole = _count(s_unet, s_cn)  # the few-step stage trains the whole student and keeps a target copy
        few = StageCost("few-step", steps, rate, cfg.batch_size, size, whole)
        few.memory = memory(whole, whole, s_act * act_scale + frozen_peak)
        few.step_macs = micro * (2 * t_step + 4 * s_step)  # guided teacher pair, target, student fwd + bwd
        stages.append(few)
    image = text + 4 * s_step + decode
    gain = image / (image - decode + tiny_decode) if macs else math.inf
    tiny_added = cfg.tiny_decoder or (
        cfg.recipe == "fast"
        and cfg.from_run is None
        and {"auto": gain >= TINY_DECODER_MIN_GAIN, "always": True, "never": False}[cfg.tiny_decoder_stage]
    )
    if tiny_added:
        steps, rate = scale.objectives["tiny_decoder"]
        if cfg.tiny_decoder:
            steps, rate = cfg.max_steps, cfg.learning_rate
        if cfg.tiny_decoder_from is not None:  # a pretrained decoder is scored, not trained
            steps = 0
        stage = StageCost("tiny-decoder", steps, rate, cfg.batch_size, size, _count(tiny))
        stage.memory = memory(_count(tiny), 0, tiny_act + frozen_peak / act_scale)
        stage.step_macs = cfg.batch_size * 3 * (tiny_decode + tiny_encode)
        stages.append(stage)
    return {
        "resolution": size,
        "teacher": {
            "unet_params": _count(teacher.unet),
            "controlnet_params": _count(teacher.controlnet),
            "step_macs": t_step,
        },
        "student": {
            "preset": cfg.student,
            "unet_params": 0 if shares_unet else _count(s_unet),
            "shares_teacher_unet": shares_unet,
            "controlnet_params": _count(s_cn),
            "step_macs": s_step,
        },
        "tiny_decoder": {"gain": gain, "added": bool(tiny_added), "decode_share": decode / max(1, image)},
        "stages": stages,
        "encode_macs": encode,
    }


def _encoder_macs(vae: Any, size: int) -> int:
    from refine_control.models.cost import count_macs

    with torch.device("meta"):
        pixels = torch.zeros(1, vae.config.in_channels, size, size)
        return count_macs(lambda: vae.encode(pixels))


def _stage2_steps(cfg: DistillConfig) -> int:
    """Stage-2 steps when unlabelled images exist (known before reading the data only for explicit sources)."""
    if cfg.stage2_steps is not None:
        return cfg.stage2_steps
    unlabelled = cfg.unlabelled is not None or (cfg.teacher == "builtin" and cfg.builtin_unlabelled > 0)
    return cfg.max_steps // 2 if unlabelled else 0


def peak_memory(report: dict[str, Any]) -> tuple[int, str]:
    stage = max(report["stages"], key=lambda s: s.memory_total)
    return stage.memory_total, stage.name
