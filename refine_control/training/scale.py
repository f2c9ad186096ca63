"""Scale-aware defaults: the learning rate, steps, batch and resolution that `refine-distill` uses when no flag sets
them, chosen by the size of the teacher's UNet (docs/distill.md, "Defaults by teacher size").

One row per teacher size. The `builtin` row holds the defaults the recipe was tuned on (the shipped 64-px shapes
teacher) and must not change; the `sd15` row is for an SD1.5-sized teacher (UNet ~860 M parameters, 512 px). A
teacher gets the row whose reference UNet size is nearest to its own on a log scale. Explicit flags always win.

Where the `sd15` values come from (anchors; "reconstruction" marks our own choice, not a published number):
- stage 1 (distillation): learning rate 5e-5 is BK-SDM's (arXiv 2305.15798; its training script
  `scripts/kd_train.sh`: constant 5e-5, batch 64 × 4 accumulation = 256, 512 px, output + feature + task loss).
  50,000 steps is the iteration count of BK-SDM's released models (its README: batch 256, 50K iterations).
- few-step stage: learning rate 1e-6 and 1,000 steps are those of diffusers' latent consistency distillation
  example for SD1.5 (LCM, arXiv 2310.04378; examples/consistency_distillation: batch 12, 512 px, target EMA 0.95,
  the same 0.95 as our `--target-decay`).
- tiny decoder: neither TAESD nor SDXS (arXiv 2403.16627, whose 1.2 M-parameter image decoder is the anchor for
  the stage) publish training settings; 1e-3 as on the built-in teacher, 5,000 steps: reconstruction.
- batch 4 per process: reconstruction, the largest power of two whose `--dry-run` memory estimate stays under
  24 GiB in every stage of the default recipe (compact-wide student, bf16 mixed precision, 512 px); at batch 8 the
  tiny-decoder stage estimates 28.7 GiB. BK-SDM's batch of 256 is reached with `--grad-accum`.
- resolution: the teacher's native size (512 px for SD1.5, BK-SDM's training size).
"""

import math
from dataclasses import dataclass

# objective → (steps, learning rate); objectives: stage 1 "distill", "few_step", "tiny_decoder".
Objectives = dict[str, tuple[int, float]]


@dataclass(frozen=True)
class Scale:
    name: str
    description: str
    reference_unet_params: int  # the UNet size this row was set for
    objectives: Objectives
    batch_size: int
    resolution: int | None  # None: the teacher's native size (UNet sample size × VAE scale factor)


SCALES: dict[str, Scale] = {
    s.name: s
    for s in (
        Scale(
            "builtin",
            "the built-in shapes teacher's size (64 px; the recipe was tuned on it)",
            4_594_852,
            {"distill": (1600, 2e-3), "few_step": (600, 2e-4), "tiny_decoder": (1500, 1e-3)},
            16,
            None,
        ),
        Scale(
            "sd15",
            "SD1.5 size (UNet ~860 M parameters, 512 px)",
            859_520_964,
            {"distill": (50_000, 5e-5), "few_step": (1000, 1e-6), "tiny_decoder": (5000, 1e-3)},
            4,
            None,
        ),
    )
}
DEFAULT_SCALE = "builtin"  # a DistillConfig built without a teacher in view (tests, the library API)


def pick_scale(unet_params: int) -> Scale:
    """The row whose reference UNet size is nearest to `unet_params` on a log scale."""
    size = math.log(max(1, unet_params))
    return min(SCALES.values(), key=lambda s: abs(math.log(s.reference_unet_params) - size))
