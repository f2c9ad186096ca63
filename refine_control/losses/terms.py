"""The three terms of the tri-level knowledge fusion loss (Refine-Control, arXiv 2509.22139).

The paper names the levels (task, output, feature with asymmetric alignment); its formulas could not be read,
so these follow the BK-SDM template (arXiv 2305.15798) adapted to a ControlNet — a reconstruction, see
docs/method.md. All distances are mean squared errors; teacher tensors are always detached targets.
"""

import torch
import torch.nn.functional as F
from torch import nn

from refine_control.models.denoiser import DenoiserOutput


def high_pass(x: torch.Tensor) -> torch.Tensor:
    """x minus its 3×3 local mean: the fine detail (textures, edges) that pixel losses on whole images neglect."""
    return x - F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Mean squared error; with `weight` (B,), each sample's mean error is weighted before the batch mean."""
    per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").flatten(1).mean(dim=1)
    return (per_sample * weight).mean() if weight is not None else per_sample.mean()


class TaskLoss(nn.Module):
    """L_task = w(t)·‖ε̂_S − target‖²: the usual denoising objective (target = ε, or v for v-prediction teachers),
    with per-sample timestep weights w(t) (min-SNR-γ by default, 1 to weigh timesteps equally)."""

    def forward(
        self,
        student: DenoiserOutput,
        teacher: DenoiserOutput | None,
        target: torch.Tensor,
        weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return weighted_mse(student.noise_pred, target, weight)


class OutputLoss(nn.Module):
    """L_out = w(t)·‖ε̂_S − sg(ε̂_T)‖²: mimic the teacher's prediction on the same noisy latents and conditions,
    with the task term's timestep weights."""

    def forward(
        self,
        student: DenoiserOutput,
        teacher: DenoiserOutput | None,
        target: torch.Tensor,
        weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if teacher is None:
            raise ValueError("the output term needs the teacher's prediction")
        return weighted_mse(student.noise_pred, teacher.noise_pred.detach(), weight)


def _projector(c_student: int, c_teacher: int) -> nn.Module:
    if c_student == c_teacher:
        return nn.Identity()
    conv = nn.Conv2d(c_student, c_teacher, kernel_size=1)
    nn.init.normal_(conv.weight, std=0.02)
    nn.init.zeros_(conv.bias)
    return conv


class FeatureLoss(nn.Module):
    """L_feat = mean_k ‖A_k(h^S_k) − sg(h^T_k)‖² over the aligned taps k, with asymmetric alignment.

    Asymmetric: only the student is projected (a trainable 1×1 conv A_k from its width to the teacher's, identity
    when the widths already match); the teacher's features stay fixed, detached targets. The projectors live here,
    are trained with the student and are discarded after training. With `normalize`, each tap's error is divided
    by the teacher tensor's mean square so that deep, large-norm residuals do not drown the rest.
    """

    def __init__(self, channels: dict[str, tuple[int, int]], normalize: bool = False) -> None:
        """channels: tap name → (student channels, teacher channels)."""
        super().__init__()
        self.taps = list(channels)
        self.normalize = normalize
        self.projectors = nn.ModuleDict({_key(name): _projector(cs, ct) for name, (cs, ct) in channels.items()})

    def forward(
        self,
        student: DenoiserOutput,
        teacher: DenoiserOutput | None,
        target: torch.Tensor,
        weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`weight` is ignored: each tap is already normalised by the teacher's scale (see `normalize`)."""
        if teacher is None:
            raise ValueError("the feature term needs the teacher's features")
        losses = []
        for name in self.taps:
            projector, feature = self.projectors[_key(name)], student.features[name]
            # float32, or bf16 where FSDP's mixed precision casts the projector's weights for the forward pass
            s = projector(feature.to(projector.weight.dtype if isinstance(projector, nn.Conv2d) else torch.float32))
            t = teacher.features[name].detach().float()
            if s.shape[-2:] != t.shape[-2:]:
                s = F.interpolate(s, size=t.shape[-2:], mode="bilinear", align_corners=False)
            loss = F.mse_loss(s.float(), t)
            if self.normalize:
                loss = loss / (t.pow(2).mean() + 1e-6)
            losses.append(loss)
        return torch.stack(losses).mean()


def _key(tap: str) -> str:
    # ModuleDict keys may not contain dots.
    return tap.replace(".", "__")
