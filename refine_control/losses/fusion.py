"""One module that combines the loss terms with configurable weights and logs each term on its own."""

from dataclasses import dataclass

import torch
from torch import nn

from refine_control.losses.terms import FeatureLoss, OutputLoss, TaskLoss
from refine_control.models.denoiser import DenoiserOutput


@dataclass
class LossOutput:
    total: torch.Tensor  # scalar with grad
    terms: dict[str, torch.Tensor]  # detached per-term values, for logging


class TriLevelLoss(nn.Module):
    """L = λ_task·L_task + λ_out·L_out + λ_feat·L_feat; terms with weight 0 are not computed at all."""

    def __init__(
        self,
        weights: tuple[float, float, float],
        feature_channels: dict[str, tuple[int, int]],
        normalize_features: bool = False,
    ) -> None:
        super().__init__()
        self.weights = dict(zip(("task", "output", "feature"), weights, strict=True))
        terms: dict[str, nn.Module] = {"task": TaskLoss(), "output": OutputLoss()}
        if self.weights["feature"] > 0:
            terms["feature"] = FeatureLoss(feature_channels, normalize_features)
        self.terms = nn.ModuleDict({name: term for name, term in terms.items() if self.weights[name] > 0})

    @property
    def needs_teacher(self) -> bool:
        return self.weights["output"] > 0 or self.weights["feature"] > 0

    def forward(
        self,
        student: DenoiserOutput,
        teacher: DenoiserOutput | None,
        target: torch.Tensor,
        weight: torch.Tensor | None = None,
    ) -> LossOutput:
        """`weight` (B,): per-sample timestep weights of the task and output terms (None: equal)."""
        values = {name: term(student, teacher, target, weight) for name, term in self.terms.items()}
        total = sum((self.weights[name] * value for name, value in values.items()), torch.zeros(()))
        return LossOutput(total, {name: value.detach() for name, value in values.items()})

    def extra_repr(self) -> str:
        return " + ".join(f"{w:g}·L_{name}" for name, w in self.weights.items() if w > 0)
