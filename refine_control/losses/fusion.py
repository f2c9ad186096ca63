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
        teacher_samples: torch.Tensor | None = None,
    ) -> LossOutput:
        """`weight` (B,): per-sample timestep weights of the task and output terms (None: equal).
        `teacher_samples` (B,) bool: the samples the teacher-level terms (output, feature) score (None: all); the
        others get the task term only. A scored sample keeps the share of a term it has in a full batch."""
        values = {}
        for name, term in self.terms.items():
            if name == "task" or teacher_samples is None:
                values[name] = term(student, teacher, target, weight)
            elif not bool(teacher_samples.any()):
                values[name] = torch.zeros((), device=target.device)
            else:
                keep = teacher_samples
                kept_weight = None if weight is None else weight[keep]
                scored = term(_samples(student, keep), _samples(teacher, keep), target[keep], kept_weight)
                values[name] = scored * keep.float().mean()
        total = sum((self.weights[name] * value for name, value in values.items()), torch.zeros(()))
        return LossOutput(total, {name: value.detach() for name, value in values.items()})

    def extra_repr(self) -> str:
        return " + ".join(f"{w:g}·L_{name}" for name, w in self.weights.items() if w > 0)


def _samples(out: DenoiserOutput | None, keep: torch.Tensor) -> DenoiserOutput | None:
    """The output of the samples in `keep` only."""
    if out is None:
        return None
    return DenoiserOutput(out.noise_pred[keep], {name: f[keep] for name, f in out.features.items()})
