"""Single-file checkpoints as a teacher: one `.safetensors` holding a whole SD1.x model in the original layout (as
A1111 / ComfyUI use them), and a ControlNet as one file, loaded through diffusers' `from_single_file`.

A single file holds weights, not configs, so each needs a diffusers config directory: `--teacher-config DIR` (the
diffusers pipeline layout without weights: model_index.json, each component's config.json, the tokenizer files;
its `controlnet/` serves a single-file ControlNet), or, without it, the configs of the hub repo diffusers maps the
checkpoint's keys to, when that repo is already in the local Hugging Face cache. Nothing is downloaded: where the
configs are in neither place the error says so (diffusers itself would fetch them from the hub, so it is always
given a local directory). Pickled checkpoints (`.ckpt`, ...) can run code when loaded and need
`--allow-pickle-weights`.
"""

import logging
from pathlib import Path
from typing import Any

import torch

from refine_control.errors import ConfigError
from refine_control.models.teacher import PICKLE_SUFFIXES

logger = logging.getLogger(__name__)

# diffusers' model types (single_file_utils.infer_diffusers_model_type) a teacher or its ControlNet may have.
TEACHER_TYPES = ("v1",)
CONTROLNET_TYPES = ("controlnet",)
# A key every SD1.x UNet in the original layout has (diffusers' type inference falls through to "v1" otherwise).
SD1_UNET_KEY = "model.diffusion_model.input_blocks.0.0.weight"
CONFIG_HINT = (
    "pass --teacher-config DIR: a diffusers pipeline layout without weights (model_index.json, the config.json of "
    "unet/, vae/, text_encoder/ and controlnet/, tokenizer/ and scheduler/), e.g. the config files of "
    "stable-diffusion-v1-5/stable-diffusion-v1-5 copied over"
)


def is_single_file(spec: str | None) -> bool:
    return spec is not None and spec != "builtin" and Path(spec).expanduser().is_file()


def check_checkpoint_file(what: str, path: Path, allow_pickle: bool) -> None:
    """Accept a `.safetensors` file; a pickled one only with `allow_pickle`; anything else is an error."""
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return
    if suffix in PICKLE_SUFFIXES:
        if allow_pickle:
            return
        raise ConfigError(
            f"{what} {path} is a pickled checkpoint ({suffix}), which can run code when loaded; refusing to load it",
            hint="convert it to .safetensors where you trust it, or pass --allow-pickle-weights if you trust it",
        )
    raise ConfigError(
        f"{what} {path} is a file but not a checkpoint (.safetensors, or pickled {', '.join(PICKLE_SUFFIXES)})",
        hint="pass a single-file checkpoint or a diffusers directory",
    )


def checkpoint_shapes(path: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors as meta tensors (names and shapes only; a `.safetensors` file is not read in full)."""
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}  # noqa: SIM118
        except Exception as err:  # safetensors raises its own error types for a corrupt header
            raise ConfigError(f"{path} is not a readable safetensors file ({err})") from err
    from diffusers.loaders.single_file_utils import load_single_file_checkpoint

    try:
        return load_single_file_checkpoint(str(path), local_files_only=True)
    except Exception as err:
        raise ConfigError(f"{path} is not a readable checkpoint ({err})") from err


def _validate_config_dir(folder: Path, needs: tuple[str, ...]) -> Path:
    missing = [name for name in needs if not (folder / name).is_file()]
    if missing:
        raise ConfigError(f"--teacher-config {folder} lacks {', '.join(missing)}", hint=CONFIG_HINT)
    return folder


def _cached_repo(repo: str) -> Path | None:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None


def config_dir(what: str, checkpoint: Path, given: str | None, types: tuple[str, ...], needs: tuple[str, ...]) -> Path:
    """The diffusers config directory for `checkpoint`: `given`, or inferred from its keys in the local cache."""
    if given is not None:
        folder = Path(given).expanduser()
        if not folder.is_dir():
            raise ConfigError(f"--teacher-config {given} is not a directory", hint=CONFIG_HINT)
        return _validate_config_dir(folder, needs)
    from diffusers.loaders.single_file_utils import DIFFUSERS_DEFAULT_PIPELINE_PATHS, infer_diffusers_model_type

    shapes = checkpoint_shapes(checkpoint)
    model_type = infer_diffusers_model_type(shapes)
    if model_type not in types or (types == TEACHER_TYPES and SD1_UNET_KEY not in shapes):
        kind = "SD1.x ControlNet" if types == CONTROLNET_TYPES else "SD1.x model (original single-file layout)"
        found = "no SD1.x UNet keys" if model_type == "v1" else f"diffusers reads it as {model_type!r}"
        raise ConfigError(f"{what} {checkpoint} is not an {kind}: {found}", hint=CONFIG_HINT)
    repo = DIFFUSERS_DEFAULT_PIPELINE_PATHS[model_type]["pretrained_model_name_or_path"]
    folder = _cached_repo(repo)
    if folder is None:
        raise ConfigError(
            f"the configs of {what} {checkpoint} cannot be inferred offline: its keys say {repo}, which is not in "
            "the local Hugging Face cache (nothing is downloaded)",
            hint=CONFIG_HINT,
        )
    return _validate_config_dir(folder, needs)


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _dtype(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """`torch_dtype` only where it is not the default fp32 (diffusers warns about every cast it makes)."""
    return {} if dtype == torch.float32 else {"torch_dtype": dtype}


def load_single_file_controlnet(
    path: Path, config: Path, subfolder: str | None, dtype: torch.dtype, allow_pickle: bool
) -> Any:
    """A `ControlNetModel` from one checkpoint file (original or diffusers key layout) and its config."""
    from diffusers import ControlNetModel

    check_checkpoint_file("--controlnet", path, allow_pickle)
    try:
        return ControlNetModel.from_single_file(
            str(path), config=str(config), subfolder=subfolder, local_files_only=True, **_dtype(dtype)
        )
    except Exception as err:  # diffusers raises many types for a checkpoint that does not fit its config
        raise ConfigError(
            f"could not load the ControlNet {path} with the config in {config}: {_first_line(err)}"
        ) from err


def load_single_file_pipeline(path: Path, config: Path, controlnet: Any, dtype: torch.dtype) -> Any:
    """A `StableDiffusionControlNetPipeline` from one SD1.x checkpoint file, its config dir and a ControlNet."""
    import diffusers
    from diffusers import StableDiffusionControlNetPipeline

    if not logger.isEnabledFor(logging.INFO):
        diffusers.utils.logging.disable_progress_bar()  # no per-component loading bars in quiet mode
    try:
        pipeline = StableDiffusionControlNetPipeline.from_single_file(
            str(path), config=str(config), controlnet=controlnet, local_files_only=True, safety_checker=None,
            feature_extractor=None, requires_safety_checker=False, **_dtype(dtype),
        )  # fmt: skip
    except Exception as err:
        raise ConfigError(
            f"could not load the teacher {path} with the configs in {config}: {_first_line(err)}",
            hint="the file must be an SD1.x checkpoint in the original layout that fits those configs",
        ) from err
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


TEACHER_NEEDS = ("model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json")


def teacher_config_dir(path: Path, given: str | None, allow_pickle: bool) -> Path:
    """The config directory of a single-file teacher (checked before anything reads the weights)."""
    check_checkpoint_file("--teacher", path, allow_pickle)
    return config_dir("--teacher", path, given, TEACHER_TYPES, TEACHER_NEEDS)


def controlnet_config_dir(
    path: Path, given: str | None, teacher_dir: Path | None, allow_pickle: bool
) -> tuple[Path, str | None]:
    """(root, subfolder) of a single-file ControlNet's config: `--teacher-config DIR/controlnet`, the teacher
    directory's `controlnet/`, or the hub repo its keys map to when that is in the local cache."""
    check_checkpoint_file("--controlnet", path, allow_pickle)
    for root in (Path(given).expanduser() if given else None, teacher_dir):
        if root is not None and (root / "controlnet" / "config.json").is_file():
            return root, "controlnet"
    return config_dir("--controlnet", path, None, CONTROLNET_TYPES, ("config.json",)), None
