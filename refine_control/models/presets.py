"""Student presets, defined relative to the teacher's configs so one name fits the built-in teacher and SD1.5.

Two families:
- `controlnet-*`: only the ControlNet is compressed; the student shares the teacher's frozen UNet and its
  asymmetric output convolutions map its widths to the UNet's (the reference reading of Refine-Control,
  arXiv 2509.22139; the paper's exact student is not known, see docs).
- `compact-*`: the base UNet shrinks too, in the spirit of BK-SDM (arXiv 2305.15798: fewer blocks per stage,
  here also narrower channels), with a ControlNet mirroring the compact UNet. Only these cut whole-system cost
  by more than the ControlNet's share (~26% of a step at SD1.5 scale).

Parameter counts in the comments were counted on the SD1.5 configs (UNet 859.5 M + ControlNet 361.3 M), built on
the meta device with diffusers 0.42.1.
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from refine_control.errors import ConfigError
from refine_control.registry import Registry

if TYPE_CHECKING:
    from diffusers import ControlNetModel, UNet2DConditionModel


@dataclass(frozen=True)
class StudentPreset:
    name: str
    description: str
    width: float  # multiplier on every stage's channel count
    shrink_unet: bool  # False: train a ControlNet only, on the teacher's frozen UNet
    layers_per_block: int | None = None  # None keeps the teacher's depth (required when the UNet is shared)
    attention_free_stages: int = 0  # leading (highest-resolution) stages whose attention is removed
    controlnet_width: float | None = None  # compact only: the ControlNet's own multiplier (None: mirror the UNet)
    conditioning_width: float = 1.0  # multiplier on the control-image encoder (conditioning embedding) widths
    use_when: str = ""  # one line for the preset table and --help: what it is good for (measured)


# How a student's weights start: random, or copied from the teacher (see models/initialise.py).
INIT_METHODS = ("random", "leading", "uniform")

STUDENT_PRESETS: Registry[StudentPreset] = Registry("student preset")
for _preset in (
    # SD1.5: ControlNet 95.9 M (widths 160/320/640/640) on the shared UNet.
    StudentPreset("controlnet-half", "ControlNet at 0.5x width on the teacher's frozen UNet", 0.5, False),
    # SD1.5: ControlNet 26.8 M (widths 96/160/320/320), no attention at the highest resolution.
    StudentPreset(
        "controlnet-quarter",
        "ControlNet at 0.25x width, no full-resolution attention",
        0.25,
        False,
        attention_free_stages=1,
    ),
    # SD1.5: UNet 148.0 M + ControlNet 61.4 M: half width, one layer per block.
    StudentPreset("compact-small", "UNet and ControlNet at 0.5x width, 1 layer per block", 0.5, True, 1),
    # SD1.5: UNet 145.7 M + ControlNet 60.6 M, and no attention at the highest resolution (the costly part on CPU).
    StudentPreset(
        "compact-tiny", "compact-small without full-resolution attention", 0.5, True, 1, attention_free_stages=1
    ),
    # Experimental: a wider UNet with a narrow ControlNet and control encoder at the same cost.
    StudentPreset(
        "compact-wide",
        "UNet at 0.67x width, ControlNet at 0.33x, control encoder at 0.5x, 1 layer per block",
        2 / 3,
        True,
        1,
        attention_free_stages=1,
        controlnet_width=1 / 3,
        conditioning_width=0.5,
    ),
):
    STUDENT_PRESETS.register(_preset.name, _preset)


def _scaled_widths(widths: tuple[int, ...], factor: float, groups: int, heads: Any, preset: str) -> tuple[int, ...]:
    out = tuple(max(groups, int(w * factor / groups + 0.5) * groups) for w in widths)
    head_counts = heads if isinstance(heads, (list, tuple)) else [heads] * len(out)
    for teacher_width, width, h in zip(widths, out, head_counts, strict=True):
        if h and width % h:
            raise PresetMismatchError(
                f"student preset {preset!r} does not fit this teacher: its width {teacher_width} × {factor:g} "
                f"rounds to {width}, which {h} attention heads do not divide"
            )
    return out


class PresetMismatchError(ConfigError):
    """A preset cannot be built from this teacher's configs."""


def fitting_presets(teacher_unet: "UNet2DConditionModel", teacher_controlnet: "ControlNetModel") -> list[str]:
    """The presets that can be built from this teacher (checked on the meta device: no weights, no memory)."""
    import torch
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(_config(teacher_unet))
        controlnet = type(teacher_controlnet).from_config(_config(teacher_controlnet))
    fitting = []
    for name in STUDENT_PRESETS.names():
        try:
            with torch.device("meta"):
                _build(unet, controlnet, STUDENT_PRESETS.get(name))
        except PresetMismatchError:
            continue
        fitting.append(name)
    return fitting


def _drop_attention(block_types: tuple[str, ...], stages: int, *, up: bool) -> tuple[str, ...]:
    n = len(block_types)
    out = []
    for i, name in enumerate(block_types):
        stage = n - 1 - i if up else i
        out.append(name.replace("CrossAttn", "") if stage < stages else name)
    return tuple(out)


def _config(model: Any) -> dict[str, Any]:
    # Private keys such as `_use_default_values` would make `from_config` restore defaults over our edits.
    return {k: v for k, v in model.config.items() if not k.startswith("_")}


def _heads(config: Any) -> Any:
    return config.num_attention_heads or config.attention_head_dim


def build_student(
    teacher_unet: "UNet2DConditionModel", teacher_controlnet: "ControlNetModel", preset: StudentPreset
) -> tuple["UNet2DConditionModel", "ControlNetModel"]:
    """Build a randomly initialised student (UNet, ControlNet) for `preset` from the teacher's configs.

    For ControlNet-only presets the returned UNet *is* `teacher_unet` (shared, frozen by the caller). A preset
    that does not fit the teacher is a `ConfigError` that names the presets that do.
    """
    try:
        return _build(teacher_unet, teacher_controlnet, preset)
    except PresetMismatchError as err:
        fitting = fitting_presets(teacher_unet, teacher_controlnet)
        raise ConfigError(
            str(err),
            hint=f"presets that fit this teacher: {', '.join(fitting)}" if fitting else "no preset fits this teacher",
        ) from None


def _build(
    teacher_unet: "UNet2DConditionModel", teacher_controlnet: "ControlNetModel", preset: StudentPreset
) -> tuple["UNet2DConditionModel", "ControlNetModel"]:
    from diffusers import ControlNetModel, UNet2DConditionModel

    from refine_control.models.student import AsymControlNetModel

    groups = teacher_unet.config.norm_num_groups or 1
    unet_cfg = _config(teacher_unet)
    cn_cfg = _config(teacher_controlnet)
    if preset.shrink_unet:
        unet_cfg["block_out_channels"] = _scaled_widths(
            tuple(unet_cfg["block_out_channels"]), preset.width, groups, _heads(teacher_unet.config), preset.name
        )
        unet_cfg["layers_per_block"] = preset.layers_per_block or unet_cfg["layers_per_block"]
        unet_cfg["down_block_types"] = _drop_attention(
            tuple(unet_cfg["down_block_types"]), preset.attention_free_stages, up=False
        )
        unet_cfg["up_block_types"] = _drop_attention(
            tuple(unet_cfg["up_block_types"]), preset.attention_free_stages, up=True
        )
        unet = UNet2DConditionModel.from_config(unet_cfg)
        conditioning = _scaled_widths(
            tuple(cn_cfg["conditioning_embedding_out_channels"]), preset.conditioning_width, 1, None, preset.name
        )
        if preset.controlnet_width is None:
            # The student ControlNet mirrors the compact UNet, as ControlNetModel.from_unet does.
            controlnet = ControlNetModel.from_unet(
                unet,
                conditioning_embedding_out_channels=conditioning,
                load_weights_from_unet=False,
                conditioning_channels=cn_cfg.get("conditioning_channels", 3),
            )
            return unet, controlnet
        # A ControlNet narrower than its UNet: asymmetric output convolutions reach the UNet's widths.
        student_cn_cfg = dict(cn_cfg)
        student_cn_cfg.update(
            layers_per_block=unet.config.layers_per_block,
            down_block_types=tuple(unet.config.down_block_types),
            block_out_channels=_scaled_widths(
                tuple(cn_cfg["block_out_channels"]), preset.controlnet_width, groups, _heads(unet.config), preset.name
            ),
            conditioning_embedding_out_channels=conditioning,
            target_block_out_channels=tuple(unet.config.block_out_channels),
        )
        return unet, AsymControlNetModel.from_config(student_cn_cfg)
    if preset.layers_per_block not in (None, teacher_controlnet.config.layers_per_block):
        raise PresetMismatchError(
            f"student preset {preset.name!r} has {preset.layers_per_block} layers per block but shares the teacher's "
            f"UNet, which has {teacher_controlnet.config.layers_per_block}"
        )
    cn_cfg["block_out_channels"] = _scaled_widths(
        tuple(cn_cfg["block_out_channels"]), preset.width, groups, _heads(teacher_controlnet.config), preset.name
    )
    cn_cfg["down_block_types"] = _drop_attention(
        tuple(cn_cfg["down_block_types"]), preset.attention_free_stages, up=False
    )
    cn_cfg["conditioning_embedding_out_channels"] = _scaled_widths(
        tuple(cn_cfg["conditioning_embedding_out_channels"]), preset.conditioning_width, 1, None, preset.name
    )
    cn_cfg["target_block_out_channels"] = tuple(teacher_unet.config.block_out_channels)
    return teacher_unet, AsymControlNetModel.from_config(cn_cfg)


def count_params(*modules: Any) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())
