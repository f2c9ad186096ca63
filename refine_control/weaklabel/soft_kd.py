"""Hinton knowledge distillation: the one place the τ² convention of soft-label KD is applied."""

import torch
import torch.nn.functional as F


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    temperature: float = 4.0,
    kd_weight: float = 0.9,
) -> torch.Tensor:
    """(1 − a)·CE(y, s) + a·T²·KL(softmax(t/T) ‖ softmax(s/T)), batch-mean; a = `kd_weight`.

    The T² factor keeps the soft term's gradient scale independent of T (Hinton et al. 2015). Defaults are the
    CRD-benchmark values (T = 4, 0.9 KD / 0.1 CE). Without `labels` only the KD term is returned (a = 1).
    """
    if temperature <= 0:
        raise ValueError(f"`temperature` must be > 0, got {temperature}")
    t = temperature
    soft = F.kl_div(
        F.log_softmax(student_logits / t, 1),
        F.log_softmax(teacher_logits.detach() / t, 1),
        reduction="batchmean",
        log_target=True,
    ) * (t * t)
    if labels is None:
        return soft
    return (1.0 - kd_weight) * F.cross_entropy(student_logits, labels) + kd_weight * soft
