"""Small classifiers for the CPU-scale reproductions (the papers use CIFAR ResNets / WRNs; see docs/weaklabel.md)."""

import torch
from torch import nn


class MLP(nn.Module):
    """Flatten → hidden ReLU layers → linear head; `features()` is the penultimate representation.

    With `proj_dim`, a linear projection head `project()` (for contrastive losses) sits on the features.
    `hidden=()` gives multinomial logistic regression.
    """

    def __init__(self, in_dim: int, hidden: tuple[int, ...], num_classes: int, proj_dim: int | None = None) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_classes)
        self.proj = nn.Linear(width, proj_dim) if proj_dim else None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, ...) → (B, D) penultimate features."""
        return self.body(x)

    def project(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, D) → (B, P) L2-normalised projection (the normalised features when there is no head)."""
        z = self.proj(feats) if self.proj is not None else feats
        return nn.functional.normalize(z, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_mlp(
    image_shape: tuple[int, ...], hidden: tuple[int, ...], num_classes: int, *, seed: int, proj_dim: int | None = None
) -> MLP:
    """A freshly initialised MLP, its init drawn from `seed` (independent of the global RNG state)."""
    in_dim = 1
    for s in image_shape:
        in_dim *= s
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MLP(in_dim, hidden, num_classes, proj_dim)
