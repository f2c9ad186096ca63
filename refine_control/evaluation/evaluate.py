"""`evaluate(cfg)`: generate with the model (and its teacher) from the same prompts, controls and noise, and score.

Two benchmarks:
- **shapes** (built-in teacher and its students): held-out `test`-split shapes, where every metric has an exact
  ground truth (PSNR/SSIM vs the render, edge P/R/F1 vs the control, 1-px and pixel-exact, edge chamfer distance,
  mask IoU, colour ΔE, oracle accuracies, domain FID/KID).
- **folder** (any teacher, `--data DIR`): a captioned image folder; only the metrics that need no ground-truth
  render (edge P/R/F1 vs the control, fidelity to the teacher, domain FID/KID with a feature net trained on it).

"Kept" ratios (model mean / teacher mean) come with paired bootstrap 95% intervals over the evaluation images
(`bootstrap.py`); the strict (pixel-exact, ControlNet++) edge F1 is the one to headline.

"Domain FID/KID" are Fréchet/kernel distances in the 64-d features of a small net trained on the benchmark's own
data, not Inception features: they compare models on one benchmark and are not comparable to published FIDs.
"""

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from refine_control.builtin.shapes import BACKGROUND, RESOLUTION, make_sample, render, sample_specs
from refine_control.errors import ConfigError
from refine_control.evaluation import metrics as M
from refine_control.evaluation.bootstrap import LEVEL, RESAMPLES, ratio_interval
from refine_control.evaluation.generate import Sampling, generate, initial_noise, model_sampling
from refine_control.evaluation.oracle import (
    SHAPE_TASKS,
    FeatureNet,
    caption_classes,
    judge_cache_dir,
    load_net,
    predict,
    save_net,
    shapes_oracle_digest,
    spec_labels,
    to_batch,
    train_folder_net,
    train_shapes_oracle,
)
from refine_control.evaluation.targets import Target, resolve_target
from refine_control.evaluation.teacher_cache import load_teacher_images, save_teacher_images, teacher_images_key
from refine_control.models.control_cache import cache_control_embedding
from refine_control.models.layout import to_channels_last
from refine_control.models.pipeline_dir import load_pipeline

logger = logging.getLogger(__name__)

MIN_FID_SAMPLES = 64  # covariances of the 64-d features need at least as many samples
EDGE_PREPROCESSORS = ("canny", "lineart")
FOLDER_NET_IMAGES = 10_000  # at most this many folder images train the feature net
# Metrics reported as model / teacher ("kept"); the strict edge F1 is the headline one (issue 28).
KEPT = ("edge_f1_strict", "edge_f1", "mask_iou", "colour_acc", "shape_acc", "texture_acc")


@dataclass(frozen=True)
class EvalConfig:
    """Options of `refine-eval` (see its `--help`)."""

    target: str
    num_samples: int = 256
    seed: int = 0
    data: str | None = None
    teacher: str | None = None
    steps: int | None = None  # the model's; None: its own recommendation (student/sampling.json), else 20
    guidance_scale: float | None = None  # the model's; None: its own recommendation, else 3.0
    first_timestep: int | None = None  # a few-step student's; None: its own recommendation
    teacher_steps: int = 20
    teacher_guidance_scale: float = 3.0
    batch_size: int = 32
    oracle_steps: int = 600
    split: str = "test"  # shapes only: `val` to choose recipes, `test` to report them

    def __post_init__(self) -> None:
        if self.num_samples < MIN_FID_SAMPLES:
            raise ConfigError(
                f"`--num-samples` {self.num_samples} is too few for the domain FID/KID; use at least {MIN_FID_SAMPLES}"
            )
        for name, low in (("steps", 1), ("teacher_steps", 1), ("batch_size", 1), ("oracle_steps", 1)):
            value = getattr(self, name)
            if value is not None and value < low:
                raise ConfigError(f"`--{name.replace('_', '-')}` must be >= {low}, got {value}")
        for name in ("guidance_scale", "teacher_guidance_scale"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"`--{name.replace('_', '-')}` must be >= 0, got {value}")
        if self.split not in ("val", "test"):
            raise ConfigError(f"`--split` must be val or test, got {self.split!r}")

    def model_sampling(self, model_dir: Path) -> Sampling:
        """The model's settings: the options given, else its recommendation, else the teacher's defaults."""
        return model_sampling(model_dir, self.steps, self.guidance_scale, self.first_timestep, self.teacher_sampling)

    @property
    def teacher_sampling(self) -> Sampling:
        return Sampling(self.teacher_steps, self.teacher_guidance_scale, self.batch_size)


@dataclass
class Benchmark:
    """Prompts, controls and everything needed to score generated images on one benchmark."""

    mode: str  # "shapes" or "folder"
    prompts: list[str]
    controls: np.ndarray  # (N, H, W, 3) float32 in [0, 1]
    truth: np.ndarray  # (N, H, W, 3) uint8: ground-truth renders (shapes) or the real images (folder)
    reference: np.ndarray  # (M, H, W, 3) uint8: the real side of the domain FID/KID
    judge: FeatureNet
    info: dict[str, Any] = field(default_factory=dict)
    masks: np.ndarray | None = None  # (N, H, W) bool, shapes only
    labels: dict[str, np.ndarray] | None = None  # oracle targets, shapes only
    edge_metrics: bool = True
    strict_edges: bool = True  # the controls are Canny maps: the pixel-exact (ControlNet++) scores apply


def _cached_net(
    target: Target, name: str, train: Any, tasks: dict[str, int], shared: Path | None = None
) -> FeatureNet:
    """Train a judge, or reuse the one cached (safetensors) in the run dir's eval/ folder or at `shared` (the judge
    cache, for judges that depend on nothing of the run); a judge trained or found is kept in both."""
    own = target.run_dir / "eval" / f"{name}.safetensors" if target.run_dir else None
    places = [p for p in (own, shared) if p is not None]
    net = None
    for path in places:
        if (net := load_net(path, tasks)) is not None:
            logger.info("reusing the cached judge %s", path)
            break
    if net is None:
        net = train()
    for path in places:
        if not path.is_file():
            try:
                save_net(net, path)
            except OSError as err:  # a read-only cache costs only time
                logger.warning("could not cache the judge at %s (%s)", path, err)
    return net


def shapes_benchmark(cfg: EvalConfig, target: Target) -> Benchmark:
    specs = sample_specs(cfg.split, 2 * cfg.num_samples, cfg.seed)
    samples = [make_sample(s) for s in specs[: cfg.num_samples]]
    name = f"shapes-oracle-seed{cfg.seed}-steps{cfg.oracle_steps}"
    cache = judge_cache_dir()
    oracle = _cached_net(
        target, name, lambda: train_shapes_oracle(cfg.seed, cfg.oracle_steps), SHAPE_TASKS,
        None if cache is None else cache / f"{name}-{shapes_oracle_digest()}.safetensors",
    )  # fmt: skip
    return Benchmark(
        mode="shapes",
        prompts=[s.caption for s in samples],
        controls=np.stack([s.control for s in samples]),
        truth=np.stack([s.image for s in samples]),
        reference=np.stack([render(s)[0] for s in specs[cfg.num_samples :]]),  # other held-out shapes
        judge=oracle,
        info={"split": cfg.split, "held_out": True},
        masks=np.stack([s.mask for s in samples]),
        labels=spec_labels([s.spec for s in samples]),
    )


def folder_benchmark(cfg: EvalConfig, target: Target, folder: str, resolution: int, held_out: bool) -> Benchmark:
    from refine_control.data.folders import load_image, read_image_folder
    from refine_control.preprocess import get_preprocessor

    captioned = [r for r in read_image_folder(folder) if r.text is not None]
    if not captioned:
        raise ConfigError(
            f"image folder {folder} has no captions (metadata.jsonl `text`); refine-eval prompts the model with them",
            hint='add a metadata.jsonl with {"file_name": ..., "text": ...} per image',
        )
    if len(captioned) < cfg.num_samples:
        raise ConfigError(
            f"image folder {folder} has {len(captioned)} captioned images, fewer than `--num-samples` {cfg.num_samples}",
            hint=f"lower --num-samples (at least {MIN_FID_SAMPLES} for the domain FID) or add images",
        )
    order = np.random.default_rng(cfg.seed).permutation(len(captioned))
    chosen = [captioned[i] for i in order[: cfg.num_samples]]
    rest = [captioned[i] for i in order[cfg.num_samples : 2 * cfg.num_samples]]
    truth = np.stack([load_image(r.path, resolution) for r in chosen])
    reference = np.stack([load_image(r.path, resolution) for r in rest]) if len(rest) == len(chosen) else truth
    name = target.run_config.get("preprocessor", "canny")
    preprocessor = get_preprocessor(name)
    controls = np.stack([preprocessor(img, np.random.default_rng([cfg.seed, i])) for i, img in enumerate(truth)])
    pool = [captioned[i] for i in order[:FOLDER_NET_IMAGES]]
    pool_captions = [r.text or "" for r in pool]
    classes = caption_classes(pool_captions)
    tasks = {"caption": len(classes)} if classes is not None else {"rotation": 4}
    digest = hashlib.sha256(str(Path(folder).resolve()).encode()).hexdigest()[:10]
    judge = _cached_net(
        target, f"folder-net-{digest}-{resolution}px-seed{cfg.seed}-steps{cfg.oracle_steps}",
        lambda: train_folder_net(
            np.stack([load_image(r.path, resolution) for r in pool]), pool_captions, cfg.seed, cfg.oracle_steps
        ),
        tasks,
    )  # fmt: skip
    prompts = [r.text or "" for r in chosen]
    # Captions that name classes: does the image show the class it was prompted with (the judge's class index)?
    labels = {"caption": np.array([classes[p] for p in prompts])} if classes is not None else None
    info = {"folder": str(folder), "held_out": held_out, "preprocessor": name, "captioned_images": len(captioned)}
    return Benchmark(
        "folder", prompts, controls, truth, reference, judge, info, labels=labels,
        edge_metrics=name in EDGE_PREPROCESSORS, strict_edges=name == "canny",
    )  # fmt: skip


def domain_fid_kid(net: FeatureNet, real: np.ndarray, fake: np.ndarray, seed: int) -> tuple[float, float]:
    """Domain FID and KID (torchmetrics, with `net`'s 64-d features instead of Inception's)."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    subset = min(100, len(real), len(fake))
    fid = FrechetInceptionDistance(feature=net, normalize=True)
    kid = KernelInceptionDistance(feature=net, normalize=True, subset_size=subset, subsets=50)
    for metric in (fid, kid):
        for images, is_real in ((real, True), (fake, False)):
            for i in range(0, len(images), 256):
                metric.update(to_batch(images[i : i + 256]), real=is_real)
    torch.manual_seed(seed)  # KID draws its subsets from the global generator
    return float(fid.compute()), float(kid.compute()[0])


def per_image_scores(images: np.ndarray, bench: Benchmark) -> dict[str, np.ndarray]:
    """Every metric of the benchmark that is defined per image, as (N,) arrays (accuracies as 0/1): what `score`
    averages and what the paired bootstrap intervals resample."""
    out: dict[str, np.ndarray] = {}
    if bench.mode == "shapes":
        out["psnr_gt_db"] = M.psnr(images, bench.truth)
        out["ssim_gt"] = M.ssim(images, bench.truth)
    if bench.edge_metrics:
        out.update(M.edge_scores(images, bench.controls[..., 0] > 0.5, strict=bench.strict_edges))
    if bench.mode == "shapes" and bench.masks is not None:
        out["mask_iou"] = np.array(
            [M.mask_iou(M.foreground_mask(img, BACKGROUND), m) for img, m in zip(images, bench.masks, strict=True)]
        )
        out["colour_delta_e"] = np.array(
            [M.colour_error(img, t, m) for img, t, m in zip(images, bench.truth, bench.masks, strict=True)]
        )
    if bench.labels is not None:
        predicted = predict(bench.judge, images)
        for task, labels in bench.labels.items():
            out[f"{task}_acc"] = (predicted[task] == labels).astype(np.float64)
    return out


def score(
    images: np.ndarray, bench: Benchmark, seed: int, per_image: dict[str, np.ndarray] | None = None
) -> dict[str, float]:
    """Every metric of the benchmark for one set of generated images (N, H, W, 3) uint8: the means of
    `per_image_scores` (given, or computed here) and the domain FID/KID."""
    values = per_image_scores(images, bench) if per_image is None else per_image
    out = {name: M.finite_mean(v) if name == "psnr_gt_db" else float(np.mean(v)) for name, v in values.items()}
    out["domain_fid"], out["domain_kid"] = domain_fid_kid(bench.judge, bench.reference, images, seed)
    return out


def kept_ratios(
    main: dict[str, Any], teacher: dict[str, float], model_scores: dict[str, np.ndarray],
    teacher_scores: dict[str, np.ndarray],
) -> None:  # fmt: skip
    """Add `<metric>_kept` (model mean / teacher mean) to `main` for each kept metric both have, and its paired
    bootstrap 95% interval over the images to `main["intervals"]`."""
    intervals: dict[str, list[float]] = {}
    for name in KEPT:
        if name not in main or not teacher.get(name):
            continue
        main[f"{name}_kept"] = main[name] / teacher[name]
        low, high = ratio_interval(model_scores[name], teacher_scores[name])
        intervals[f"{name}_kept"] = [low, high]
    if intervals:
        main["intervals"] = {
            **intervals,
            "method": f"paired percentile bootstrap over the evaluation images, {RESAMPLES} resamples, seed 0, "
            f"{int(100 * LEVEL)}%",
        }


def _sampling_pipeline(path: Path, controlnet: Path | None = None) -> Any:
    """A pipeline that only samples here: its convolutional models in NHWC, and its ControlNet embedding each
    control image once per sampling run rather than at every step (benchmarks/eval_time.py)."""
    pipeline = load_pipeline(path, controlnet)
    to_channels_last(pipeline.unet, pipeline.controlnet, pipeline.vae)
    cache_control_embedding(pipeline.controlnet)
    return pipeline


def _resolution(pipeline: Any, target: Target) -> int:
    native = int(pipeline.unet.config.sample_size) * int(pipeline.vae_scale_factor)
    return int(target.run_config.get("resolution") or native)


def _benchmark(cfg: EvalConfig, target: Target, resolution: int) -> Benchmark:
    if cfg.data is not None:
        return folder_benchmark(cfg, target, cfg.data, resolution, held_out=True)
    if target.run_dir is not None and target.teacher_spec != "builtin" and target.run_config.get("labelled"):
        logger.warning("no --data: scoring on the run's own labelled folder (training data, not held out)")
        return folder_benchmark(cfg, target, target.run_config["labelled"], resolution, held_out=False)
    if resolution == RESOLUTION:
        return shapes_benchmark(cfg, target)
    raise ConfigError(
        f"{cfg.target} makes {resolution} px images; the built-in shapes benchmark is {RESOLUTION} px",
        hint="pass --data DIR: a held-out image folder with captions (metadata.jsonl)",
    )


@dataclass(frozen=True)
class EvalResult:
    report: dict[str, Any]  # JSON-ready: settings, `columns` (metrics per model) and `metrics` (the model's)
    images: dict[str, np.ndarray]  # generated images (N, H, W, 3) uint8 per model
    controls: np.ndarray | None = None  # the control images (N, H, W, 3) uint8 they were generated from


def _teacher_images(cfg: EvalConfig, target: Target, bench: Benchmark, latents: torch.Tensor) -> np.ndarray:
    """The teacher's images: from the judge cache when this very set was sampled before, else sampled (and kept)."""
    assert target.teacher_dir is not None
    cache = judge_cache_dir()
    folder = key = None
    if cache is not None:
        folder = cache.parent / "teacher-images"
        key = teacher_images_key(
            target.teacher_dir, target.teacher_controlnet, bench.prompts, bench.controls, latents,
            cfg.teacher_sampling, cfg.seed,
        )  # fmt: skip
        if (images := load_teacher_images(folder, key, len(bench.prompts))) is not None:
            return images
    teacher = _sampling_pipeline(target.teacher_dir, target.teacher_controlnet)
    logger.info("generating %d images with the teacher", cfg.num_samples)
    images = generate(teacher, bench.prompts, bench.controls, latents, cfg.teacher_sampling, cfg.seed)
    if folder is not None and key is not None:
        save_teacher_images(folder, key, images)
    return images


def evaluate(cfg: EvalConfig, teacher_images: np.ndarray | None = None) -> EvalResult:
    """Generate with the model (and its teacher) and score every model on the same benchmark.

    `teacher_images`: the teacher's images for exactly these settings from an earlier call (`EvalResult.images`),
    to skip generating them again (sweeps score many students against one teacher)."""
    target = resolve_target(cfg.target, cfg.teacher)
    model = _sampling_pipeline(target.model_dir)
    resolution = _resolution(model, target)
    bench = _benchmark(cfg, target, resolution)
    latents = initial_noise(model, cfg.num_samples, resolution, cfg.seed)

    # 1. Generate with the model (its own sampling settings), then the teacher, from the same prompts, controls and
    # initial noise.
    sampling = cfg.model_sampling(target.model_dir)
    logger.info("generating %d images with the %s (%d steps)", cfg.num_samples, target.label, sampling.steps)
    generated = {target.label: generate(model, bench.prompts, bench.controls, latents, sampling, cfg.seed)}
    del model
    if target.teacher_dir is not None and teacher_images is not None:
        generated["teacher"] = teacher_images
    elif target.teacher_dir is not None:
        generated["teacher"] = _teacher_images(cfg, target, bench, latents)

    # 2. Score every model, and the real images as the ceiling/floor of each metric.
    per_image = {label: per_image_scores(images, bench) for label, images in generated.items()}
    columns = {label: score(images, bench, cfg.seed, per_image[label]) for label, images in generated.items()}
    columns["ground truth" if bench.mode == "shapes" else "real images"] = score(bench.truth, bench, cfg.seed)
    main = columns[target.label]
    if "teacher" in generated:
        main["teacher_psnr_db"] = M.finite_mean(M.psnr(generated[target.label], generated["teacher"]))
        main["teacher_ssim"] = float(M.ssim(generated[target.label], generated["teacher"]).mean())
        kept_ratios(main, columns["teacher"], per_image[target.label], per_image["teacher"])
    report = {
        "target": cfg.target,
        "model": target.label,
        "teacher": target.teacher_spec,
        "benchmark": bench.mode,
        "data": bench.info,
        "num_samples": cfg.num_samples,
        "seed": cfg.seed,
        "sampling": {
            "steps": sampling.steps,
            "timesteps": None if sampling.timesteps is None else list(sampling.timesteps),
            "guidance_scale": sampling.guidance_scale,
            "scheduler": "the pipeline's own",
            "teacher_steps": cfg.teacher_steps,
            "teacher_guidance_scale": cfg.teacher_guidance_scale,
        },
        "judge": {
            "tasks": bench.judge.tasks,
            "training_steps": cfg.oracle_steps,
            "feature_dim": bench.judge.num_features,
        },
        "columns": columns,
        "metrics": main,
        # Per-image scores of every model (same image order for every run with this seed and split): what a paired
        # bootstrap between two runs (arms) resamples.
        "per_image": {
            label: {name: [round(float(x), 6) for x in values] for name, values in scores.items()}
            for label, scores in per_image.items()
        },
        "note": "domain FID/KID use the judge net's 64-d features, not Inception: not comparable to published FIDs",
    }
    controls = (np.clip(bench.controls, 0, 1) * 255).round().astype(np.uint8)
    return EvalResult(report, generated, controls)
