"""Memory layout of models that only run forward (the pipelines an evaluation samples with): channels_last (NHWC).

On this project's CPUs oneDNN convolves NHWC tensors without reordering the weights and activations on every call;
a frozen model's weights are converted once. The values computed are the same up to float rounding (a different
summation order in the convolution kernels); tests/test_layout.py bounds the difference. Trained weights stay
contiguous: checkpoints and safetensors files are written from them. The trainer's frozen teacher stays contiguous:
at its batch of 16 the A/B of benchmarks/train_step.py did not show a gain beyond its noise floor
(results/recipe/train-step.json).
"""

import torch
from torch import nn


def to_channels_last(*modules: nn.Module) -> None:
    """Convert the 4-d weights and buffers of `modules` to channels_last, in place."""
    for module in modules:
        module.to(memory_format=torch.channels_last)
