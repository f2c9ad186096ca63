"""The one minibatch training loop the weak-label methods share: Adam, clean-validation early stopping.

Each method supplies `step(idx) -> loss` for a batch of training indices (it owns its targets, confidences
and augmentations); `fit` does the optimisation, evaluates validation accuracy after every epoch and restores
the best-validation weights — the papers' "test accuracy at the epoch of best validation accuracy" rule.
"""

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from refine_control.weaklabel.datasets import Split

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitConfig:
    epochs: int = 60
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 15  # epochs without a new best validation accuracy before stopping; 0 = never stop early

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.patience < 0:
            raise ValueError(f"invalid FitConfig: {self}")


@dataclass
class FitResult:
    best_val_acc: float
    best_epoch: int
    epochs_run: int
    val_history: list[float] = field(default_factory=list)


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 2048) -> torch.Tensor:
    """(N, ...) → (N, K) logits in eval mode (the model's mode is restored)."""
    was_training = model.training
    model.eval()
    out = torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return out


def accuracy(model: nn.Module, split: Split) -> float:
    if len(split) == 0:
        return float("nan")
    return (predict_logits(model, split.x).argmax(1) == split.y).float().mean().item()


def minibatches(n: int, batch_size: int, generator: torch.Generator | None) -> list[torch.Tensor]:
    """A random permutation of range(n) cut into batches (the last may be smaller)."""
    perm = torch.randperm(n, generator=generator)
    return list(perm.split(batch_size))


def fit(
    model: nn.Module,
    n_train: int,
    step: Callable[[torch.Tensor], torch.Tensor],
    val: Split | None,
    cfg: FitConfig,
    generator: torch.Generator | None = None,
    *,
    extra_params: list[nn.Parameter] | None = None,
    on_epoch_end: Callable[[int], None] | None = None,
) -> FitResult:
    """Train `model` for up to `cfg.epochs` epochs over `n_train` samples; keep the best-validation weights.

    Without `val`, the last epoch's weights are kept and `best_val_acc` is NaN.
    """
    params = [*model.parameters(), *(extra_params or [])]
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    best_acc, best_epoch, best_state = -1.0, -1, None
    history: list[float] = []
    epoch = 0
    for epoch in range(cfg.epochs):
        model.train()
        for idx in minibatches(n_train, cfg.batch_size, generator):
            loss = step(idx)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss {loss.item()} at epoch {epoch}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if on_epoch_end is not None:
            on_epoch_end(epoch)
        if val is None:
            continue
        acc = accuracy(model, val)
        history.append(acc)
        if acc > best_acc:
            best_acc, best_epoch, best_state = acc, epoch, copy.deepcopy(model.state_dict())
        elif cfg.patience and epoch - best_epoch >= cfg.patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return FitResult(best_acc if val is not None else float("nan"), best_epoch, epoch + 1, history)
