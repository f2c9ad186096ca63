"""The embedded default: the procedural shapes dataset and a small pretrained teacher trained on it."""

from pathlib import Path

from refine_control.errors import ConfigError

BUILTIN_TEACHER_DIR = Path(__file__).with_name("teacher")


def builtin_teacher_dir() -> Path:
    """The shipped teacher pipeline directory; a `ConfigError` with the fix if its weights are missing."""
    if not (BUILTIN_TEACHER_DIR / "model_index.json").is_file() or not any(
        BUILTIN_TEACHER_DIR.glob("*/diffusion_pytorch_model*.safetensors")
    ):
        raise ConfigError(
            f"the builtin teacher's weights are missing from {BUILTIN_TEACHER_DIR}",
            hint="they ship with the source checkout, not with a wheel: install it editable (`pip install -e "
            "'.[train]'`, as `make setup` does), give your own `--teacher DIR`, or train them with "
            f"`refine-teacher -o {BUILTIN_TEACHER_DIR}` (about half an hour on 2 cores)",
        )
    return BUILTIN_TEACHER_DIR
