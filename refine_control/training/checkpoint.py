"""Resumable training state in safetensors + JSON (no pickle): trainable weights, optimizer, EMA, step.

A checkpoint is a directory `checkpoints/step-NNNNNN/` written atomically; `state.json` inside it is the
proof it is complete. RNG state is not stored: every random draw of the trainer is derived from
(seed, step), so weights + optimizer + step are enough to continue bit for bit.

It always holds whole tensors. Under FSDP2 (`torch.distributed.fsdp.fully_shard`) parameters, optimizer slots and
the EMA are `DTensor` shards: `gather_state` makes them whole (a collective: every process calls it, in the same
order) and `restore_checkpoint` cuts each process's shard back out, so a checkpoint written on N processes, sharded
or not, resumes on M.
"""

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.distributed.tensor import DTensor, distribute_tensor

from refine_control.atomic import atomic_dir
from refine_control.errors import CheckpointError

if TYPE_CHECKING:
    from diffusers.training_utils import EMAModel

logger = logging.getLogger(__name__)


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor on CPU: an FSDP2 shard is all-gathered (a collective), a plain tensor is returned as is."""
    if isinstance(tensor, DTensor):
        tensor = tensor.full_tensor()
    return tensor.detach().cpu().contiguous()


def _shard_like(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`value` (whole) laid out as `like`: this process's shard when `like` is a DTensor, else moved to its device."""
    if isinstance(like, DTensor):  # every process holds the whole value, so no data needs to move
        return distribute_tensor(value.to(like.dtype), like.device_mesh, like.placements, src_data_rank=None)
    return value.to(like.device)


@dataclass(frozen=True)
class TrainingState:
    """What a checkpoint holds, as whole tensors: trainable weights by name, the optimizer's state dict, and the
    EMA as (averaged tensors by name, the rest of its state as JSON) when one is kept."""

    trainable: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    ema: tuple[dict[str, torch.Tensor], dict[str, Any]] | None


def gather_state(
    trainable: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    ema: "EMAModel | None",
    ema_names: list[str],
) -> TrainingState:
    """The training state as whole tensors. Under FSDP2 every process must call this (it all-gathers)."""
    opt = optimizer.state_dict()
    slots = {
        i: {k: whole(v) if isinstance(v, torch.Tensor) else v for k, v in s.items()} for i, s in opt["state"].items()
    }
    return TrainingState(
        {name: whole(value) for name, value in trainable.items()},
        {"state": slots, "param_groups": opt["param_groups"]},
        ema_state(ema, ema_names) if ema is not None else None,
    )


def _optimizer_to_flat(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for index, slots in state["state"].items():
        for key, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_from_flat(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in [*tensors.items(), *meta["scalars"].items()]:
        index, slot = key.split(".", 1)
        state.setdefault(int(index), {})[slot] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(directory: Path, step: int, state: TrainingState, extra: dict[str, Any], keep: int) -> Path:
    """Write `directory/step-NNNNNN` atomically and delete all but the newest `keep` checkpoints."""
    target = directory / f"step-{step:06d}"
    with atomic_dir(target) as tmp:
        save_file(state.trainable, tmp / "trainable.safetensors")
        opt_tensors, opt_meta = _optimizer_to_flat(state.optimizer)
        save_file(opt_tensors, tmp / "optimizer.safetensors")
        (tmp / "optimizer.json").write_text(json.dumps(opt_meta))
        if state.ema is not None:
            save_file(state.ema[0], tmp / "ema.safetensors")
            (tmp / "ema.json").write_text(json.dumps(state.ema[1]))
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
    """An `EMAModel` over the parameters `names` as (whole averaged tensors by name, its other state as JSON)."""
    state = ema.state_dict()
    shadow = state.pop("shadow_params")
    return {name: whole(value) for name, value in zip(names, shadow, strict=True)}, state


def restore_checkpoint(
    path: Path,
    named_parameters: dict[str, torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    ema: "EMAModel | None",
    ema_names: list[str],
) -> int:
    """Load a checkpoint into the trainable parameters, the optimizer and the EMA (each process its own shard under
    FSDP2); return its step."""
    state = load_checkpoint(path)
    if set(state["trainable"]) != set(named_parameters) or (ema is not None) != (state["ema"] is not None):
        raise CheckpointError(f"checkpoint {path} does not match this student", hint="start over with --overwrite")
    with torch.no_grad():
        for name, value in state["trainable"].items():
            named_parameters[name].copy_(_shard_like(value, named_parameters[name]))
    params = [p for group in optimizer.param_groups for p in group["params"]]
    opt = state["optimizer"]
    opt["state"] = {
        i: {k: _shard_like(v, params[i]) if isinstance(v, torch.Tensor) and v.dim() else v for k, v in slots.items()}
        for i, slots in opt["state"].items()
    }
    optimizer.load_state_dict(opt)
    if ema is not None:
        tensors, meta = state["ema"]
        if set(tensors) != set(ema_names):
            raise CheckpointError(f"checkpoint {path}: the EMA does not match this student")
        shadows = [_shard_like(tensors[name], like) for name, like in zip(ema_names, ema.shadow_params, strict=True)]
        ema.load_state_dict({**meta, "shadow_params": shadows})
    step = int(state["state"]["step"])
    logger.info("resumed from %s at step %d", path, step)
    return step
