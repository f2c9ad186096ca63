"""Small CNN judges trained on the fly: the shapes oracle (shape, colour, texture) and a feature net per folder.

Both are one `FeatureNet`: a conv trunk, a 64-d penultimate feature (used for the domain FID/KID) and one linear
head per task. Training is seeded and runs in well under a minute on 2 cores; the weights can be cached as
safetensors next to a run (never pickle).
"""

import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save
from torch import nn

from refine_control.atomic import write_bytes
from refine_control.builtin.shapes import COLOURS, SHAPES, TEXTURES, ShapeSpec, iter_specs, render

logger = logging.getLogger(__name__)

FEATURE_DIM = 64


class FeatureNet(nn.Module):
    """Conv trunk → 64-d feature → one classification head per task. Input: (N, 3, H, W) float in [0, 1]."""

    def __init__(self, tasks: dict[str, int]) -> None:
        super().__init__()
        self.tasks = dict(tasks)
        self.num_features = FEATURE_DIM  # read by torchmetrics' FID/KID

        def block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, padding=1), nn.GroupNorm(8, c_out), nn.SiLU())

        # The first conv keeps full resolution (textures have an 8-pixel period), then the trunk halves quickly.
        self.trunk = nn.Sequential(
            block(6, 24), block(24, 48, stride=2), block(48, 48), nn.MaxPool2d(2),
            block(48, 96), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            nn.Linear(96 * 16, FEATURE_DIM), nn.SiLU(),
        )  # fmt: skip
        self.heads = nn.ModuleDict({name: nn.Linear(FEATURE_DIM, n) for name, n in self.tasks.items()})
        # Set after training so the FID/KID features have RMS 1 on the training data (KID's cubic kernel would
        # otherwise reach into the thousands); saved with the weights.
        self.register_buffer("feature_scale", torch.ones(()))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        x = images * 2.0 - 1.0
        # A fixed high-pass copy makes low-contrast texture (±22 of 255 in shapes) as salient as the outline.
        # tanh keeps the outline's large steps from drowning the texture's small ones.
        high_pass = torch.tanh((x - F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)) * 8.0)
        return self.trunk(torch.cat([x, high_pass], dim=1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The feature vectors (N, 64), the input torchmetrics' FID/KID expect from a custom extractor."""
        return self.features(images) * self.feature_scale

    def logits(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.features(images)
        return {name: head(feats) for name, head in self.heads.items()}


def to_batch(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 → (N, 3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0


def augment(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mild pixel noise and brightness jitter, so the judge is not thrown by a generator's small artefacts."""
    n = images.shape[0]
    noise = torch.randn(images.shape, generator=gen) * torch.rand(n, 1, 1, 1, generator=gen) * 0.03
    gain = 1.0 + (torch.rand(n, 1, 1, 1, generator=gen) - 0.5) * 0.08
    return (images * gain + noise).clamp(0, 1)


def train_feature_net(
    tasks: dict[str, int],
    sample: Callable[[np.random.Generator, int], tuple[np.ndarray, dict[str, np.ndarray]]],
    steps: int,
    seed: int,
    batch_size: int = 64,
    lr: float = 2e-3,
) -> FeatureNet:
    """Train a `FeatureNet` on batches from `sample(rng, n) -> (images uint8 (n, H, W, 3), {task: labels (n,)})`."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng([seed, 7])
    net = FeatureNet(tasks)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.15)
    net.train()
    for step in range(steps):
        images, labels = sample(rng, batch_size)
        logits = net.logits(augment(to_batch(images), gen))
        loss = sum(F.cross_entropy(logits[t], torch.as_tensor(labels[t], dtype=torch.long)) for t in tasks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if (step + 1) % 100 == 0:
            logger.debug("feature net step %d/%d loss %.4f", step + 1, steps, loss.item())
    net.eval().requires_grad_(False)
    with torch.no_grad():
        feats = net.features(to_batch(sample(rng, 256)[0]))
        net.feature_scale.fill_(1.0 / float(feats.pow(2).mean().sqrt().clamp_min(1e-6)))
    return net


@torch.no_grad()
def predict(net: FeatureNet, images: np.ndarray, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Predicted class index per task: {task: (N,)}."""
    out: dict[str, list[np.ndarray]] = {t: [] for t in net.tasks}
    for start in range(0, len(images), batch_size):
        logits = net.logits(to_batch(images[start : start + batch_size]))
        for task, value in logits.items():
            out[task].append(value.argmax(dim=1).numpy())
    return {t: np.concatenate(v) for t, v in out.items()}


def save_net(net: FeatureNet, path: Path) -> None:
    metadata = {"tasks": ",".join(f"{k}={v}" for k, v in net.tasks.items())}
    write_bytes(path, save({k: v.contiguous() for k, v in net.state_dict().items()}, metadata=metadata))


def load_net(path: Path, tasks: dict[str, int]) -> FeatureNet | None:
    """A cached net with the same tasks, or None (missing, unreadable or different tasks)."""
    if not path.is_file():
        return None
    try:
        state = load_file(path)
        net = FeatureNet(tasks)
        net.load_state_dict(state, strict=True)
    except (OSError, RuntimeError, ValueError) as err:
        logger.warning("ignoring the cached feature net %s (%s)", path, err)
        return None
    return net.eval().requires_grad_(False)


SHAPE_TASKS = {"shape": len(SHAPES), "colour": len(COLOURS), "texture": len(TEXTURES)}
CACHE_ENV = "REFINE_CONTROL_CACHE"  # a folder kept across runs and evaluations; unset or empty: none


def judge_cache_dir() -> Path | None:
    """Where judges that depend on nothing of a run (the shapes oracle) are kept across runs and evaluations:
    `$REFINE_CONTROL_CACHE/judges`, or None when the variable is unset or empty (the default: nothing is written
    outside the paths a command is given). Training the shapes oracle is most of an evaluation's time on 2 cores
    (benchmarks/eval_time.py), and every run dir would otherwise train the same one again."""
    value = os.environ.get(CACHE_ENV)
    return Path(value) / "judges" if value else None


def shapes_oracle_digest() -> str:
    """A digest of what the shapes oracle is trained from (this module, the shapes renderer, the torch version), so
    that a cached oracle is never reused after either changes."""
    from refine_control.builtin import shapes

    digest = hashlib.sha256(torch.__version__.encode())
    for source in (__file__, shapes.__file__):
        digest.update(Path(source).read_bytes())
    return digest.hexdigest()[:12]


def spec_labels(specs: list[ShapeSpec]) -> dict[str, np.ndarray]:
    colours = list(COLOURS)
    return {
        "shape": np.array([SHAPES.index(s.shape) for s in specs]),
        "colour": np.array([colours.index(s.colour) for s in specs]),
        "texture": np.array([TEXTURES.index(s.texture) for s in specs]),
    }


def train_shapes_oracle(seed: int, steps: int = 500) -> FeatureNet:
    """The shapes oracle: shape, colour and texture heads, trained on clean `train`-split renders."""
    stream = iter_specs("train", seed + 1_000_003)  # its own stream, apart from any teacher or student data

    def sample(rng: np.random.Generator, n: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        specs = [next(stream) for _ in range(n)]
        return np.stack([render(s)[0] for s in specs]), spec_labels(specs)

    logger.info("training the shapes oracle (%d steps)", steps)
    return train_feature_net(SHAPE_TASKS, sample, steps, seed)


def caption_classes(captions: list[str]) -> dict[str, int] | None:
    """Class index per caption when the captions name classes (each shared by several images, as in "a photo of a
    sneaker"), else None: the folder net's caption task and its labels."""
    distinct = sorted(set(captions))
    return {c: i for i, c in enumerate(distinct)} if 2 <= len(distinct) <= len(captions) // 4 else None


def train_folder_net(images: np.ndarray, captions: list[str], seed: int, steps: int = 500) -> FeatureNet:
    """A feature net for a real image folder: classify the captions when they name classes (`caption_classes`),
    else predict the rotation (0/90/180/270°) of the image."""
    index = caption_classes(captions)
    if index is not None:
        targets = np.array([index[c] for c in captions])
        tasks = {"caption": len(index)}

        def sample(rng: np.random.Generator, n: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
            idx = rng.integers(0, len(images), n)
            return images[idx], {"caption": targets[idx]}
    else:
        tasks = {"rotation": 4}

        def sample(rng: np.random.Generator, n: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
            idx, turns = rng.integers(0, len(images), n), rng.integers(0, 4, n)
            rotated = np.stack([np.rot90(images[i], k) for i, k in zip(idx, turns, strict=True)])
            return rotated, {"rotation": turns}

    logger.info("training a feature net on the folder (%s, %d steps)", next(iter(tasks)), steps)
    return train_feature_net(tasks, sample, steps, seed)
