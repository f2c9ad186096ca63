"""Initialise a student from its teacher's weights (`refine-distill --init`).

- `random`: diffusers' default initialisation (zero output convolutions), the from-scratch baseline.
- `leading`: copy every teacher tensor of the same name, cut to the student's shape by its leading indices.
- `uniform`: weight selection (arXiv 2311.18823): evenly spaced channels of the teacher tensors, so every tensor of a
  channel space takes the same channels, each GroupNorm group and attention head of a half-width student comes from
  one teacher group or head, and the timestep embedding keeps its frequencies; blocks are paired by depth as in
  BK-SDM (arXiv 2305.15798): a shallower stage keeps the teacher's first layers, and each up-block layer is paired
  with the teacher layer that reads the same skip connection.

Which choice trains best is measured, not assumed: see README ("Student presets") and results/presets/.
"""

import logging
import re
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from torch import nn

from refine_control.models.presets import INIT_METHODS
from refine_control.models.student import residual_names
from refine_control.models.transfer import TransferReport, transfer_parameters

logger = logging.getLogger(__name__)

_UP_LAYER = re.compile(r"^up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.")
_ZERO_CONV = re.compile(r"^controlnet_down_blocks\.(\d+)\.")


def depth_pairing(student: nn.Module, teacher: nn.Module) -> Callable[[str], str]:
    """Map a student tensor name to the teacher tensor it starts from, when the student has fewer layers per block.

    Down blocks keep their first layers (same names). Up block layer j reads the skip of the j-th down layer counted
    from the stage's end, and its last layer the previous stage's output: the last layer maps to the teacher's last.
    A ControlNet output convolution maps to the teacher's convolution for the same skip (`residual_names`).
    """
    s_layers, t_layers = student.config.layers_per_block, teacher.config.layers_per_block
    stages = len(student.config.block_out_channels)
    zero_convs = {}
    if hasattr(student, "controlnet_down_blocks"):
        teacher_index = {n: i for i, n in enumerate(residual_names(stages, t_layers))}
        zero_convs = {i: teacher_index[n] for i, n in enumerate(residual_names(stages, s_layers))}

    def rename(name: str) -> str:
        if (m := _UP_LAYER.match(name)) and int(m[3]) == s_layers:
            return f"up_blocks.{m[1]}.{m[2]}.{t_layers}.{name[m.end() :]}"
        if (m := _ZERO_CONV.match(name)) and int(m[1]) in zero_convs:
            return f"controlnet_down_blocks.{zero_convs[int(m[1])]}.{name[m.end() :]}"
        return name

    return rename


def initialise_student(
    method: str, teacher_parts: dict[str, nn.Module], student_parts: dict[str, nn.Module]
) -> dict[str, Any]:
    """Initialise each trainable student part (e.g. `{"unet": ..., "controlnet": ...}`) from the teacher part of
    the same key; return a JSON-ready report of what was copied."""
    if method not in INIT_METHODS:
        raise ValueError(f"unknown init {method!r}; choose one of {INIT_METHODS}")
    if method == "random":
        return {"init": "random"}
    reports: dict[str, TransferReport] = {}
    for key, student in student_parts.items():
        teacher = teacher_parts[key]
        rename = depth_pairing(student, teacher) if method == "uniform" else None
        select = "uniform" if method == "uniform" else "leading"
        reports[key] = transfer_parameters(teacher, student, select=select, source_name=rename)
        logger.info("init %s, %s: %s", method, key, reports[key].summary())
    return {"init": method, **{key: asdict(report) for key, report in reports.items()}}
