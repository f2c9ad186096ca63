"""What `refine-eval` was pointed at: a run dir, `builtin`, or a pipeline dir, and the teacher to compare with."""

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refine_control.errors import ConfigError
from refine_control.training.config import read_run_config

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """The model under evaluation and its reference teacher (None when the model is the teacher itself)."""

    label: str  # the model's column in the table
    model_dir: Path
    teacher_spec: str | None
    teacher_dir: Path | None
    teacher_controlnet: Path | None
    run_dir: Path | None
    run_config: dict[str, Any]


def _resolve_teacher(spec: str) -> Path:
    from refine_control.models.teacher import resolve_teacher_path

    return resolve_teacher_path(spec)


def resolve_target(spec: str, teacher: str | None = None) -> Target:
    """Map the `RUN` argument (and an optional `--teacher`) to directories, with one-line errors for bad input."""
    if spec == "builtin":
        from refine_control.builtin import builtin_teacher_dir

        reference = teacher if teacher not in (None, "builtin") else None
        return Target(
            "builtin teacher", builtin_teacher_dir(), reference, _resolve_teacher(reference) if reference else None,
            None, None, {},
        )  # fmt: skip
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise ConfigError(
            f"{spec!r} is neither `builtin` nor an existing directory",
            hint="pass a refine-distill run dir, a StableDiffusionControlNetPipeline directory, or `builtin`",
        )
    if (path / "model_index.json").is_file():
        return Target("model", path, teacher, _resolve_teacher(teacher) if teacher else None, None, None, {})
    if not (path / "config.json").is_file():
        raise ConfigError(
            f"{path} is neither a run dir (no config.json) nor a pipeline dir (no model_index.json)",
            hint="pass a refine-distill run dir, a StableDiffusionControlNetPipeline directory, or `builtin`",
        )
    config = read_run_config(path)
    teacher_spec = teacher or config["teacher"]
    controlnet = config.get("controlnet") if teacher is None else None
    teacher_dir = _resolve_teacher(teacher_spec)
    return Target(
        "student", path / "student", teacher_spec, teacher_dir, Path(controlnet) if controlnet else None, path, config
    )
