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


def random_affine(
    x: torch.Tensor,
    *,
    degrees: float,
    shear: float,
    scale: tuple[float, float],
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per-image rotation (±degrees), shear (±shear, radians) and isotropic scale, about the centre, zero fill."""
    B = x.shape[0]
    rot = (torch.rand(B, generator=generator) * 2 - 1) * degrees * torch.pi / 180
    sh = (torch.rand(B, generator=generator) * 2 - 1) * shear
    sc = scale[0] + torch.rand(B, generator=generator) * (scale[1] - scale[0])
    cos, sin = torch.cos(rot), torch.sin(rot)
    theta = torch.zeros(B, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos / sc, (-sin + sh * cos) / sc
    theta[:, 1, 0], theta[:, 1, 1] = sin / sc, (cos + sh * sin) / sc
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, padding_mode="zeros", align_corners=False)


def contrast_brightness(x: torch.Tensor, strength: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-image contrast factor in [1−s, 1+s] about the image mean, then brightness offset in [−s/2, s/2]."""
    B = x.shape[0]
    c = 1 + (torch.rand(B, 1, 1, 1, generator=generator) * 2 - 1) * strength
    b = (torch.rand(B, 1, 1, 1, generator=generator) - 0.5) * strength
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * c + mean + b).clamp(0.0, 1.0)


def conv_weak_view(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """FixMatch's weak view for a conv net, translated to small grey images: a random shift of up to 1/8 of the
    side (FixMatch: crop with 4-px padding on 32 px). No flip: a flip changes a digit's class."""
    return random_shift(x, max(1, x.shape[-1] // 8), generator)


def conv_strong_view(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """FixMatch's strong view, translated: the weak shift + a random affine (±25°, shear ±0.3, scale 0.85–1.15)
    + contrast/brightness jitter (RandAugment-like ops at full strength) + one Cutout of half the side."""
    out = conv_weak_view(x, generator)
    out = random_affine(out, degrees=25.0, shear=0.3, scale=(0.85, 1.15), generator=generator)
    out = contrast_brightness(out, 0.5, generator)
    return cutout(out, max(2, x.shape[-1] // 2), generator)


VIEWS = {"mlp": (weak_view, strong_view), "conv": (conv_weak_view, conv_strong_view)}
