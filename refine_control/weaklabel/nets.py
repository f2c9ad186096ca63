"""Small classifiers for the CPU-scale reproductions (the papers use CIFAR ResNets / WRNs; see docs/weaklabel.md)."""

import torch
from torch import nn


class FeatureClassifier(nn.Module):
    """`body` (input → penultimate features), a linear `head`, and an optional projection `proj` for contrastive
    losses; subclasses build the three in `__init__`."""

    body: nn.Module
    head: nn.Linear
    proj: nn.Linear | None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, ...) → (B, D) penultimate features."""
        return self.body(x)

    def project(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, D) → (B, P) L2-normalised projection (the normalised features when there is no head)."""
        z = self.proj(feats) if self.proj is not None else feats
        return nn.functional.normalize(z, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class MLP(FeatureClassifier):
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


class SmallCNN(FeatureClassifier):
    """conv3×3(c1) → ReLU → pool2 → conv3×3(c2) → ReLU → pool2 → linear(hidden) → ReLU → head.

    Small enough for CPU grids (16/32 channels: ~0.1 M parameters on 28×28), but a conv net, so shifts and
    crops are augmentations it can use (FixMatch's premise), unlike an MLP. Same `features`/`project`/`head`
    interface as `MLP`. Pooling floors odd sizes (14 → 7 → 3).
    """

    def __init__(
        self,
        image_shape: tuple[int, ...],
        num_classes: int,
        *,
        channels: tuple[int, int] = (16, 32),
        hidden: int = 64,
        proj_dim: int | None = None,
    ) -> None:
        super().__init__()
        c, h, w = image_shape
        if h < 4 or w < 4:
            raise ValueError(f"SmallCNN needs images of at least 4×4, got {h}×{w}")
        c1, c2 = channels
        self.body = nn.Sequential(
            nn.Conv2d(c, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(c2 * ((h // 2) // 2) * ((w // 2) // 2), hidden), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(hidden, num_classes)
        self.proj = nn.Linear(hidden, proj_dim) if proj_dim else None


def build_net(
    arch: str, image_shape: tuple[int, ...], num_classes: int, *, seed: int, proj_dim: int | None = None
) -> nn.Module:
    """`arch` is `mlp:H1-H2` (`mlp:` = logistic regression) or `cnn:C1-C2-H`; the init is drawn from `seed`."""
    kind, _, spec = arch.partition(":")
    dims = tuple(int(v) for v in spec.split("-") if v) if spec else ()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "mlp":
            in_dim = 1
            for s in image_shape:
                in_dim *= s
            return MLP(in_dim, dims, num_classes, proj_dim)
        if kind == "cnn" and len(dims) == 3:
            return SmallCNN(image_shape, num_classes, channels=(dims[0], dims[1]), hidden=dims[2], proj_dim=proj_dim)
    raise ValueError(f"unknown architecture {arch!r}; use mlp:H1-H2 or cnn:C1-C2-H")
