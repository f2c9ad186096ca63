"""Batched image augmentations on (B, 1, H, W) tensors in [0, 1]: the CPU stand-ins for FixMatch's weak/strong views.

The papers use flip/crop/AutoAugment/RandAugment on CIFAR with conv nets; those need torchvision, flips change
a digit's class, and the CPU-scale backbones here are MLPs, for which shifts cost ~2–13 points of clean accuracy
(measured on digits). So the views are our reconstruction: weak = N(0, 0.05²) pixel noise; strong = one Cutout
square of 3/8 of the side + 20% pixel dropout + N(0, 0.1²) noise (costs ≤ 2 points of clean accuracy).
"""

import torch


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Shift every image by its own (dy, dx) ∈ [-max_shift, max_shift]², filling with zeros."""
    if max_shift <= 0:
        return x
    B, C, H, W = x.shape
    s = max_shift
    padded = torch.nn.functional.pad(x, (s, s, s, s))
    off = torch.randint(0, 2 * s + 1, (2, B), generator=generator)
    rows = (off[0][:, None] + torch.arange(H))[:, None, :, None]  # (B, 1, H, 1)
    cols = (off[1][:, None] + torch.arange(W))[:, None, None, :]  # (B, 1, 1, W)
    b = torch.arange(B)[:, None, None, None]
    c = torch.arange(C)[None, :, None, None]
    return padded[b, c, rows, cols]


def cutout(x: torch.Tensor, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero one size×size square per image at a random position (it may overlap the border)."""
    B, _, H, W = x.shape
    cy = torch.randint(0, H, (B,), generator=generator)[:, None, None]
    cx = torch.randint(0, W, (B,), generator=generator)[:, None, None]
    ys = torch.arange(H)[None, :, None]
    xs = torch.arange(W)[None, None, :]
    half = size // 2
    hole = ((ys - cy).abs() <= half) & ((xs - cx).abs() <= half)
    return x * (~hole)[:, None].to(x.dtype)


def add_noise(x: torch.Tensor, std: float, generator: torch.Generator | None = None) -> torch.Tensor:
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype) * std
    return (x + noise).clamp_(0.0, 1.0)


def pixel_dropout(x: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    return x * (torch.rand(x.shape, generator=generator) >= p).to(x.dtype)


def weak_view(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Light pixel noise."""
    return add_noise(x, 0.05, generator)


def strong_view(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Cutout (3/8 of the side) + 20% pixel dropout + N(0, 0.1²) noise."""
    out = cutout(x, max(2, (3 * x.shape[-1]) // 8), generator)
    return add_noise(pixel_dropout(out, 0.2, generator), 0.1, generator)
