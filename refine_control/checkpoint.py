"""Resumable training state in safetensors + JSON (no pickle): trainable weights, optimizer, EMA, step.

A checkpoint is a directory `checkpoints/step-NNNNNN/` written atomically; `state.json` inside it is the
proof it is complete. RNG state is not stored: every random draw of the trainer is derived from
(seed, step), so weights + optimizer + step are enough to continue bit for bit.
"""

import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from refine_control.atomic import atomic_dir
from refine_control.errors import CheckpointError

if TYPE_CHECKING:
    from diffusers.training_utils import EMAModel

logger = logging.getLogger(__name__)


def _optimizer_to_flat(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for index, slots in state["state"].items():
        for key, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_from_flat(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in [*tensors.items(), *meta["scalars"].items()]:
        index, slot = key.split(".", 1)
        state.setdefault(int(index), {})[slot] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    directory: Path,
    step: int,
    trainable: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    ema: tuple[dict[str, torch.Tensor], dict[str, Any]] | None,
    extra: dict[str, Any],
    keep: int,
) -> Path:
    """Write `directory/step-NNNNNN` atomically and delete all but the newest `keep` checkpoints.

    `ema` is (averaged tensors by name, the rest of the EMA's state as JSON), see `ema_state`."""
    target = directory / f"step-{step:06d}"
    with atomic_dir(target) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in trainable.items()}, tmp / "trainable.safetensors")
        opt_tensors, opt_meta = _optimizer_to_flat(optimizer_state)
        save_file(opt_tensors, tmp / "optimizer.safetensors")
        (tmp / "optimizer.json").write_text(json.dumps(opt_meta))
        if ema is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in ema[0].items()}, tmp / "ema.safetensors")
            (tmp / "ema.json").write_text(json.dumps(ema[1]))
        (tmp / "state.json").write_text(json.dumps({"step": step, **extra}, indent=2))
    for old in list_checkpoints(directory)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def list_checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob("step-*") if (p / "state.json").is_file())


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint back: `trainable`, `optimizer`, `ema` (tensors, JSON state; or None) and `state`."""
    try:
        state = json.loads((path / "state.json").read_text())
        optimizer = _optimizer_from_flat(
            load_file(path / "optimizer.safetensors"), json.loads((path / "optimizer.json").read_text())
        )
        ema_file = path / "ema.safetensors"
        return {
            "trainable": load_file(path / "trainable.safetensors"),
            "optimizer": optimizer,
            "ema": (load_file(ema_file), json.loads((path / "ema.json").read_text())) if ema_file.is_file() else None,
            "state": state,
        }
    except (OSError, ValueError, KeyError, SafetensorError) as err:
        raise CheckpointError(
            f"checkpoint {path} is unreadable ({err})", hint="delete that checkpoint dir to resume from the one before"
        ) from err


def ema_state(ema: "EMAModel", names: list[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An `EMAModel` over the parameters `names` as (averaged tensors by name, its other state as JSON)."""
    state = ema.state_dict()
    shadow = state.pop("shadow_params")
    return dict(zip(names, shadow, strict=True)), state


def restore_checkpoint(
    path: Path,
    named_parameters: dict[str, torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    ema: "EMAModel | None",
    ema_names: list[str],
) -> int:
    """Load a checkpoint into the trainable parameters, the optimizer and the EMA; return its step."""
    state = load_checkpoint(path)
    if set(state["trainable"]) != set(named_parameters) or (ema is not None) != (state["ema"] is not None):
        raise CheckpointError(f"checkpoint {path} does not match this student", hint="start over with --overwrite")
    with torch.no_grad():
        for name, value in state["trainable"].items():
            named_parameters[name].copy_(value)
    optimizer.load_state_dict(state["optimizer"])
    if ema is not None:
        tensors, meta = state["ema"]
        if set(tensors) != set(ema_names):
            raise CheckpointError(f"checkpoint {path}: the EMA does not match this student")
        device = ema.shadow_params[0].device
        ema.load_state_dict({**meta, "shadow_params": [tensors[name].to(device) for name in ema_names]})
    step = int(state["state"]["step"])
    logger.info("resumed from %s at step %d", path, step)
    return step
