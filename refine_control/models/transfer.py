"""Partial parameter transfer between two torch modules, with a report of what was copied.

Background: "Towards Understanding Feature Learning in Parameter Transfer" (arXiv 2509.22056) studies inheriting
only part of an upstream model's parameters; "Initializing Models with Larger Ones" (weight selection, arXiv
2311.18823) initialises a narrower network with a subset of a wider one's weights. This routine is the general
mechanism: for every target parameter or buffer whose (optionally renamed) name exists in the source, copy it when
the shapes match, or a subset of it along every smaller dimension: the leading indices, or evenly spaced ones
(`select="uniform"`). Evenly spaced indices pick the same channels in every tensor that shares a channel space,
keep each GroupNorm group and attention head inside one source group/head when the width ratio is an integer, and
keep the frequencies of a sinusoidal embedding. `fraction` < 1 inherits only that share of the output units
(filters) of each tensor and leaves the rest at their current (random) values.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class TransferReport:
    """Names of target tensors by what happened to them."""

    copied: list[str] = field(default_factory=list)  # same shape, copied whole (or `fraction` of it)
    sliced: list[str] = field(default_factory=list)  # target smaller: leading slice of the source copied
    skipped: list[str] = field(default_factory=list)  # in both, but the target is larger in some dimension
    missing: list[str] = field(default_factory=list)  # not in the source: left as initialised
    elements_copied: int = 0
    elements_total: int = 0

    @property
    def fraction_copied(self) -> float:
        return self.elements_copied / max(1, self.elements_total)

    def summary(self) -> str:
        return (
            f"transferred {self.fraction_copied:.1%} of target elements: {len(self.copied)} tensors copied, "
            f"{len(self.sliced)} sliced, {len(self.skipped)} skipped (shape), {len(self.missing)} not in source"
        )


@torch.no_grad()
def transfer_parameters(
    source: nn.Module,
    target: nn.Module,
    *,
    fraction: float = 1.0,
    generator: torch.Generator | None = None,
    exact: bool = False,
    select: str = "leading",
    source_name: Callable[[str], str] | None = None,
) -> TransferReport:
    """Copy matching tensors (parameters and buffers) of `source` into `target`; return what was done.

    Args:
        source: the upstream model (e.g. the teacher).
        target: the downstream model (e.g. the student); modified in place.
        fraction: share of output units (dim 0) of each tensor to inherit, chosen at random with `generator`
            when < 1. 1-element tensors are inherited whole or not at all; 0-dim scalars are always copied.
        exact: inherit exactly round(fraction · rows) rows of each tensor, drawn without replacement (the
            paper's "a random α-fraction of the filters"), instead of an independent draw per row.
        select: which source indices a smaller target dimension takes: `leading` (the first ones) or `uniform`
            (evenly spaced: index ⌊i · n_source / n_target⌋).
        source_name: maps a target tensor's name to the source tensor to copy from (default: the same name), e.g.
            to pair the blocks of a shallower student with the teacher's.
    """
    if select not in ("leading", "uniform"):
        raise ValueError(f"`select` must be leading or uniform, got {select!r}")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"`fraction` must be in [0, 1], got {fraction}")
    src = dict(source.state_dict(keep_vars=True))
    report = TransferReport()
    for name, dst in target.state_dict(keep_vars=True).items():
        report.elements_total += dst.numel()
        name_in_source = source_name(name) if source_name else name
        if name_in_source not in src:
            report.missing.append(name)
            continue
        s = src[name_in_source]
        if s.dim() != dst.dim() or any(d > e for d, e in zip(dst.shape, s.shape, strict=True)):
            report.skipped.append(name)
            continue
        piece = _subset(s, tuple(dst.shape), select).to(dst.dtype)
        if fraction < 1.0 and dst.dim() > 0:
            rows = _pick_rows(dst.shape[0], fraction, exact, generator).to(dst.device)
            dst.data[rows] = piece[rows]
            report.elements_copied += int(rows.sum()) * (dst.numel() // max(1, dst.shape[0]))
        else:
            dst.data.copy_(piece)
            report.elements_copied += dst.numel()
        (report.copied if tuple(s.shape) == tuple(dst.shape) else report.sliced).append(name)
    return report


def _subset(tensor: torch.Tensor, shape: tuple[int, ...], select: str) -> torch.Tensor:
    """`tensor` reduced to `shape` by taking the leading or evenly spaced indices of every smaller dimension."""
    for dim, (have, want) in enumerate(zip(tensor.shape, shape, strict=True)):
        if have == want:
            continue
        if select == "leading":
            index = torch.arange(want)
        else:
            index = torch.div(torch.arange(want) * have, want, rounding_mode="floor")
        tensor = tensor.index_select(dim, index.to(tensor.device))
    return tensor


def _pick_rows(n: int, fraction: float, exact: bool, generator: torch.Generator | None) -> torch.Tensor:
    if not exact:
        return torch.rand(n, generator=generator) < fraction
    rows = torch.zeros(n, dtype=torch.bool)
    rows[torch.randperm(n, generator=generator)[: round(fraction * n)]] = True
    return rows
