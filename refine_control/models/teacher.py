"""Load a frozen diffusers ControlNet teacher from a local directory, the local hub cache, or `builtin`.

One code path for all of them: the components of a `StableDiffusionControlNetPipeline` layout are loaded one by
one with `local_files_only=True` (never a download), so a base text-to-image pipeline plus a separate
`--controlnet DIR` works too.

A single-file checkpoint (`--teacher model.safetensors`, `--controlnet cn.safetensors`) loads through diffusers'
`from_single_file` with a local config directory (refine_control/models/single_file.py).

Weights load from safetensors only: a component folder that holds only pickle files (`.bin`, `.pt`, ...) is
refused before anything reads them, since unpickling can run code from the file (`weights_only=True` narrows
that, it does not close it). `--allow-pickle-weights` (`allow_pickle_weights=True`, or the
`pickle_weights_allowed()` context the CLI sets) lets a user load pickled weights they trust.
"""

import contextlib
import json
import logging
import re
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import AutoencoderKL, ControlNetModel, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from refine_control.errors import ConfigError

logger = logging.getLogger(__name__)

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
REQUIRED = ("vae", "text_encoder", "tokenizer", "unet", "scheduler")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_ALLOW_PICKLE: ContextVar[bool] = ContextVar("allow_pickle_weights", default=False)


@contextlib.contextmanager
def pickle_weights_allowed(allowed: bool = True) -> Iterator[None]:
    """Within this block, `load_teacher` accepts pickled weights when no safetensors file is there."""
    token = _ALLOW_PICKLE.set(allowed)
    try:
        yield
    finally:
        _ALLOW_PICKLE.reset(token)


def check_weight_format(what: str, folder: Path, allow_pickle: bool) -> None:
    """Refuse a component folder whose weights exist only as pickle files (unless allowed)."""
    if not folder.is_dir():
        return  # reported by the loader with its own message
    files = [p for p in folder.iterdir() if p.is_file()]
    if any(p.name.endswith(".safetensors") for p in files):
        return
    pickles = sorted(p.name for p in files if p.suffix in PICKLE_SUFFIXES)
    if pickles and not allow_pickle:
        raise ConfigError(
            f"the teacher's {what} in {folder} has only pickle weights ({', '.join(pickles)}), which can run "
            "code when loaded; refusing to load them",
            hint="convert them to safetensors (`save_pretrained(DIR, safe_serialization=True)` where you trust "
            "them), or pass --allow-pickle-weights if you trust these files",
        )


@dataclass
class Teacher:
    """The frozen teacher's components; `unet` + `controlnet` are the denoiser, the rest are shared."""

    source: str
    path: Path
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    unet: UNet2DConditionModel
    controlnet: ControlNetModel
    scheduler: Any  # the pipeline's sampling scheduler, saved with the student

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def resolution(self) -> int:
        """The image size the teacher was built for (512 for SD1.5)."""
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    def noise_scheduler(self) -> DDPMScheduler:
        """The training noise schedule (DDPM with the teacher's betas and prediction type)."""
        return DDPMScheduler.from_config(self.scheduler.config)

    def frozen_modules(self) -> list[torch.nn.Module]:
        return [self.vae, self.text_encoder, self.unet, self.controlnet]


def resolve_teacher_path(spec: str) -> Path:
    """Map `builtin`, a directory or a hub id (already in the local cache) to a local directory."""
    if spec == "builtin":
        from refine_control.builtin import builtin_teacher_dir

        return builtin_teacher_dir()
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"teacher {spec!r} is a file; pass a diffusers pipeline directory")
        return path
    if not HUB_ID.match(spec):
        raise ConfigError(
            f"teacher {spec!r} is neither an existing directory nor a hub id (org/name)",
            hint="pass `--teacher builtin`, a StableDiffusionControlNetPipeline directory, or a cached hub id",
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(spec, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError) as err:
        raise ConfigError(
            f"hub id {spec!r} is not in the local cache and nothing is downloaded at run time",
            hint=f"on a machine with network run `hf download {spec}` (or save the pipeline with save_pretrained) "
            "and pass the directory with --teacher",
        ) from err


def _load(what: str, path: Path, load: Any) -> Any:
    try:
        return load()
    except Exception as err:  # diffusers/transformers raise many types for a broken dir
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"could not load the teacher's {what} from {path}: {first_line}",
            hint="check that the directory is a complete diffusers pipeline (save_pretrained layout)",
        ) from err


def _model_index(path: Path) -> dict[str, Any]:
    index_file = path / "model_index.json"
    if not index_file.is_file():
        raise ConfigError(
            f"{path} is not a diffusers pipeline directory (no model_index.json)",
            hint="save the pipeline with `pipeline.save_pretrained(DIR)` and pass DIR",
        )
    try:
        index = json.loads(index_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{index_file} is not valid JSON: {err}") from err
    missing = [name for name in REQUIRED if not (path / name).is_dir()]
    if missing:
        raise ConfigError(f"teacher directory {path} lacks {', '.join(missing)}/", hint="pass a complete pipeline")
    return index


def load_teacher(
    spec: str,
    controlnet: str | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    allow_pickle_weights: bool | None = None,
    teacher_config: str | None = None,
) -> Teacher:
    """Load the teacher frozen (eval mode, no gradients) with the trainer's dtype and device.

    `allow_pickle_weights`: None follows `pickle_weights_allowed()` (off by default): safetensors only.
    `teacher_config`: the config directory of single-file checkpoints (see models/single_file.py)."""
    from refine_control.models.single_file import is_single_file

    allow_pickle = _ALLOW_PICKLE.get() if allow_pickle_weights is None else allow_pickle_weights
    if is_single_file(spec):
        teacher = _single_file_teacher(spec, controlnet, teacher_config, dtype, allow_pickle)
        return _frozen(teacher, device, dtype)
    path = resolve_teacher_path(spec)
    index = _model_index(path)
    folders = {name: path / name for name in ("vae", "text_encoder", "unet", "controlnet")}
    cn_file = is_single_file(controlnet)
    if controlnet is not None and not cn_file:
        folders["controlnet"] = Path(controlnet).expanduser()
    elif cn_file:
        del folders["controlnet"]
        from refine_control.models.single_file import check_checkpoint_file

        check_checkpoint_file("--controlnet", Path(str(controlnet)).expanduser(), allow_pickle)
    for name, folder in folders.items():
        check_weight_format(name, folder, allow_pickle)
    # use_safetensors=True: diffusers/transformers then never fall back to a pickle file by themselves.
    opts: dict[str, Any] = {"local_files_only": True}
    weights = {**opts, "use_safetensors": None if allow_pickle else True}
    vae = _load("vae", path, lambda: AutoencoderKL.from_pretrained(path, subfolder="vae", dtype=dtype, **weights))
    text_encoder = _load(
        "text_encoder",
        path,
        lambda: CLIPTextModel.from_pretrained(path, subfolder="text_encoder", dtype=dtype, **weights),
    )
    tokenizer = _load("tokenizer", path, lambda: CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", **opts))
    unet = _load(
        "unet",
        path,
        lambda: UNet2DConditionModel.from_pretrained(path, subfolder="unet", dtype=dtype, **weights),
    )
    scheduler_name = index.get("scheduler", [None, "DDIMScheduler"])[1]
    scheduler_cls = getattr(diffusers, str(scheduler_name), None)
    if scheduler_cls is None:
        raise ConfigError(f"teacher scheduler class {scheduler_name!r} is not a diffusers scheduler")
    scheduler = _load("scheduler", path, lambda: scheduler_cls.from_pretrained(path, subfolder="scheduler", **opts))
    if cn_file:
        cn = _single_file_controlnet(str(controlnet), teacher_config, path, dtype, allow_pickle)
    elif controlnet is not None:
        cn_path = Path(controlnet).expanduser()
        if not (cn_path / "config.json").is_file():
            raise ConfigError(f"--controlnet {controlnet!r} is not a ControlNetModel directory (no config.json)")
        cn = _load("controlnet", cn_path, lambda: ControlNetModel.from_pretrained(cn_path, dtype=dtype, **weights))
    elif (path / "controlnet").is_dir():
        cn = _load(
            "controlnet",
            path,
            lambda: ControlNetModel.from_pretrained(path, subfolder="controlnet", dtype=dtype, **weights),
        )
    else:
        raise ConfigError(
            f"teacher {spec!r} has no controlnet/ folder",
            hint="pass the ControlNet with --controlnet DIR (a base text-to-image pipeline plus a ControlNet works)",
        )
    return _frozen(Teacher(spec, path, vae, text_encoder, tokenizer, unet, cn, scheduler), device, dtype)


def _frozen(teacher: Teacher, device: str | torch.device, dtype: torch.dtype) -> Teacher:
    """Check that the ControlNet fits the UNet, then freeze every component on `device`."""
    unet, cn = teacher.unet, teacher.controlnet
    if (
        not isinstance(unet.config.cross_attention_dim, int)
        or cn.config.cross_attention_dim != unet.config.cross_attention_dim
    ):
        raise ConfigError(
            f"the ControlNet (cross_attention_dim={cn.config.cross_attention_dim}) does not fit the UNet "
            f"(cross_attention_dim={unet.config.cross_attention_dim})"
        )
    for module in teacher.frozen_modules():
        module.to(device).eval().requires_grad_(False)
    logger.info("teacher %s loaded from %s (%s)", teacher.source, teacher.path, dtype)
    return teacher


def _single_file_controlnet(
    controlnet: str, teacher_config: str | None, teacher_dir: Path | None, dtype: torch.dtype, allow_pickle: bool
) -> ControlNetModel:
    from refine_control.models.single_file import controlnet_config_dir, load_single_file_controlnet

    path = Path(controlnet).expanduser()
    root, subfolder = controlnet_config_dir(path, teacher_config, teacher_dir, allow_pickle)
    return load_single_file_controlnet(path, root, subfolder, dtype, allow_pickle)


def _single_file_teacher(
    spec: str, controlnet: str | None, teacher_config: str | None, dtype: torch.dtype, allow_pickle: bool
) -> Teacher:
    """A teacher whose base model is one checkpoint file (its ControlNet: a file or a diffusers directory)."""
    from refine_control.models.single_file import load_single_file_pipeline, teacher_config_dir

    path = Path(spec).expanduser()
    config = teacher_config_dir(path, teacher_config, allow_pickle)
    if controlnet is None:
        raise ConfigError(
            f"--teacher {spec} is a single checkpoint file, which holds no ControlNet",
            hint="pass the ControlNet with --controlnet FILE or DIR",
        )
    from refine_control.models.single_file import is_single_file

    if is_single_file(controlnet):
        cn = _single_file_controlnet(controlnet, teacher_config, config, dtype, allow_pickle)
    else:
        cn_path = Path(controlnet).expanduser()
        if not (cn_path / "config.json").is_file():
            raise ConfigError(f"--controlnet {controlnet!r} is not a ControlNetModel directory (no config.json)")
        check_weight_format("controlnet", cn_path, allow_pickle)
        weights = {"local_files_only": True, "use_safetensors": None if allow_pickle else True}
        cn = _load("controlnet", cn_path, lambda: ControlNetModel.from_pretrained(cn_path, dtype=dtype, **weights))
    pipe = load_single_file_pipeline(path, config, cn, dtype)
    return Teacher(
        spec, config, pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.unet, pipe.controlnet, pipe.scheduler
    )
