"""Where `refine-eval`'s time goes on the shapes benchmark, and what the layout options buy.

Times each part of an evaluation of a run's student against the built-in teacher on `--images` held-out shapes
(the teacher's 20 guided steps, the student's own sampling, every metric, the domain FID/KID, the paired bootstrap,
and the shapes oracle's training per step), then scales each part to the demo's 256 images and the oracle's 600
steps. Sampling and the oracle's training step are timed A/B interleaved round by round (median over rounds) with a
copy of the baseline as a case of its own: the A-vs-A ratio is the run's noise floor (the machine is shared).

- `contiguous`: the pipelines and the oracle in the default (NCHW) layout, `refine-eval` before this benchmark;
- `channels_last`: their convolutional models in NHWC;
- `+ control embedding once`: the ControlNet embeds each control image once per sampling run, not at every step
  (models/control_cache.py): what `refine-eval` samples with now.
The oracle's channels_last case is measured only: `refine-eval` trains it as before (a judge trained with other
rounding is another judge) and keeps it in the judge cache.

Usage: python benchmarks/eval_time.py --run RUN [--images 32] [--rounds 3] [--results-name recipe/eval-time]
"""

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.train_step import BASELINE_COPY, Case, interleaved
from refine_control.cli_utils import offline_env, run_cli

AFTER = "channels_last + control embedding once"  # what refine-eval samples with now
DEMO_IMAGES = 256
ORACLE_STEPS = 600
ORACLE_BATCH = 64


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    tic = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - tic


def _ab(cases: dict[str, dict[str, float]]) -> dict[str, Any]:
    names = list(cases)
    base = cases[names[0]]["median_s"]
    copy = next(n for n in names if n.endswith(BASELINE_COPY))
    ratio = base / cases[copy]["median_s"]
    floor = max(ratio, 1 / ratio)
    for m in cases.values():
        m["speedup_vs_baseline"] = base / m["median_s"]
        m["beyond_noise_floor"] = max(m["speedup_vs_baseline"], 1 / m["speedup_vs_baseline"]) > floor
    return {"cases": cases, "noise_floor_factor": floor}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, type=Path, help="a finished run dir (its student is evaluated)")
    parser.add_argument("--images", type=int, default=32, help="images per timed part. Default: %(default)s")
    parser.add_argument("--rounds", type=int, default=3, help="A/B rounds after a warm-up. Default: %(default)s")
    parser.add_argument("--oracle-steps", type=int, default=4, help="oracle steps per round. Default: %(default)s")
    parser.add_argument(
        "--results-name", default=None, metavar="GROUP/NAME", help="also write results/GROUP/NAME.json"
    )
    args = parser.parse_args(argv)
    offline_env()

    def body() -> int:
        import numpy as np
        import torch
        import torch.nn.functional as F

        from refine_control.builtin.shapes import BACKGROUND, iter_specs, make_sample, render, sample_specs
        from refine_control.errors import ConfigError
        from refine_control.evaluation import metrics as M
        from refine_control.evaluation.bootstrap import ratio_interval
        from refine_control.evaluation.evaluate import EvalConfig, domain_fid_kid
        from refine_control.evaluation.generate import generate, initial_noise
        from refine_control.evaluation.oracle import (
            SHAPE_TASKS,
            FeatureNet,
            augment,
            predict,
            spec_labels,
            to_batch,
        )
        from refine_control.evaluation.targets import resolve_target
        from refine_control.evaluation.teacher_cache import (
            load_teacher_images,
            save_teacher_images,
            teacher_images_key,
        )
        from refine_control.models.control_cache import cache_control_embedding, remove_control_cache
        from refine_control.models.pipeline_dir import load_pipeline
        from refine_control.results import split_results_name, write_result

        if args.images < 1 or args.rounds < 1 or args.oracle_steps < 1:
            raise ConfigError("--images, --rounds and --oracle-steps must be >= 1")
        results_target = split_results_name(args.results_name) if args.results_name else None
        load_at_start = round(os.getloadavg()[0], 2)
        started = time.perf_counter()
        cfg = EvalConfig(str(args.run))
        target = resolve_target(cfg.target, None)
        if target.teacher_dir is None:
            raise ConfigError(f"{args.run} has no teacher to compare with")
        n = args.images
        specs = sample_specs("test", 2 * n, 0)
        samples = [make_sample(s) for s in specs[:n]]
        prompts = [s.caption for s in samples]
        controls = np.stack([s.control for s in samples])
        truth, masks = np.stack([s.image for s in samples]), np.stack([s.mask for s in samples])
        reference = np.stack([render(s)[0] for s in specs[n:]])

        pipelines = {
            "student": load_pipeline(target.model_dir),
            "teacher": load_pipeline(target.teacher_dir, target.teacher_controlnet),
        }
        latents = initial_noise(pipelines["teacher"], n, controls.shape[1], 0)
        sampling = {"student": cfg.model_sampling(target.model_dir), "teacher": cfg.teacher_sampling}
        images: dict[str, np.ndarray] = {}

        def layout(pipe: Any, fmt: torch.memory_format, cached: bool) -> Callable[[], None]:
            def prepare() -> None:
                for model in (pipe.unet, pipe.controlnet, pipe.vae):
                    model.to(memory_format=fmt)
                (cache_control_embedding if cached else remove_control_cache)(pipe.controlnet)

            return prepare

        def sample_case(who: str, fmt: torch.memory_format, cached: bool = False) -> Case:
            def run() -> None:
                # A few-step (LCM) sampler draws fresh noise between steps from the global generator.
                torch.manual_seed(0)
                images[f"{who} {fmt} {cached}"] = generate(pipelines[who], prompts, controls, latents, sampling[who])

            return layout(pipelines[who], fmt, cached), run

        cl, contiguous = torch.channels_last, torch.contiguous_format
        print(f"timing {n} images, {args.rounds} rounds, {torch.get_num_threads()} threads", flush=True)
        ab: dict[str, Any] = {}
        for who in ("teacher", "student"):
            cases = {
                "contiguous": sample_case(who, contiguous),
                f"contiguous {BASELINE_COPY}": sample_case(who, contiguous),
                "channels_last": sample_case(who, cl),
                "channels_last + control embedding once": sample_case(who, cl, cached=True),
            }
            ab[f"{who}_sampling"] = _ab(interleaved(cases, args.rounds))
            base = images[f"{who} {contiguous} False"]
            for key, other in images.items():
                if key.startswith(who) and key != f"{who} {contiguous} False":
                    diff = np.abs(base.astype(np.int16) - other.astype(np.int16))
                    ab[f"{who}_sampling"][f"images: {key} vs contiguous"] = {
                        "max_abs_uint8": int(diff.max()),
                        "pixels_differing": float((diff > 0).mean()),
                    }
            print(f"{who} sampling: {ab[f'{who}_sampling']}", flush=True)

        # The oracle's training step (batch 64 of fresh renders: rendering, augmentation, forward, backward, AdamW).
        stream = iter_specs("train", 1_000_003)
        rng = torch.Generator().manual_seed(0)

        def oracle_case(fmt: torch.memory_format) -> Case:
            torch.manual_seed(0)
            net = FeatureNet(SHAPE_TASKS).to(memory_format=fmt)
            optimizer = torch.optim.AdamW(net.parameters(), lr=2e-3)

            def run() -> None:
                for _ in range(args.oracle_steps):
                    batch = [next(stream) for _ in range(ORACLE_BATCH)]
                    labels = spec_labels(batch)
                    pixels = augment(to_batch(np.stack([render(s)[0] for s in batch])), rng)
                    logits = net.logits(pixels.contiguous(memory_format=fmt))
                    loss = sum(F.cross_entropy(logits[t], torch.as_tensor(labels[t])) for t in SHAPE_TASKS)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()

            return lambda: None, run

        ab["oracle_training"] = _ab(
            interleaved(
                {
                    "contiguous": oracle_case(contiguous),
                    f"contiguous {BASELINE_COPY}": oracle_case(contiguous),
                    "channels_last": oracle_case(cl),
                },
                args.rounds,
            )
        )
        for m in ab["oracle_training"]["cases"].values():
            m["s_per_step"] = m["median_s"] / args.oracle_steps
        print(f"oracle training: {ab['oracle_training']}", flush=True)
        render_s = _timed(lambda: [render(next(stream)) for _ in range(ORACLE_BATCH)])[1]

        # Metrics on the teacher's images (one run each; the student's cost the same per image).
        generated = images[f"teacher {contiguous} False"]
        control_maps = controls[..., 0] > 0.5
        judge = FeatureNet(SHAPE_TASKS).eval().requires_grad_(False)  # the cost of a trained one
        edge_maps, edges_s = _timed(lambda: [M.edges(i) for i in generated])
        per_metric = {
            "psnr": _timed(lambda: M.psnr(generated, truth))[1],
            "ssim": _timed(lambda: M.ssim(generated, truth))[1],
            "canny_edges": edges_s,
            "edge_f1_1px": _timed(lambda: [M.edge_prf(e, c) for e, c in zip(edge_maps, control_maps, strict=True)])[1],
            "edge_f1_strict": _timed(
                lambda: [M.edge_prf_strict(e, c) for e, c in zip(edge_maps, control_maps, strict=True)]
            )[1],
            "edge_chamfer": _timed(
                lambda: [M.edge_chamfer(e, c) for e, c in zip(edge_maps, control_maps, strict=True)]
            )[1],
            "mask_iou": _timed(
                lambda: [
                    M.mask_iou(M.foreground_mask(i, BACKGROUND), m) for i, m in zip(generated, masks, strict=True)
                ]
            )[1],
            "colour": _timed(
                lambda: [M.colour_error(i, t, m) for i, t, m in zip(generated, truth, masks, strict=True)]
            )[1],
            "oracle_predict": _timed(lambda: predict(judge, generated))[1],
            "domain_fid_kid": _timed(lambda: domain_fid_kid(judge, reference, generated, 0))[1],
        }
        # The teacher's images from the cache: the key's digest (the teacher's files included) and the .npy read.
        with tempfile.TemporaryDirectory() as tmp:
            folder, demo_images = Path(tmp), np.repeat(generated, DEMO_IMAGES // n + 1, axis=0)[:DEMO_IMAGES]

            def from_cache() -> None:
                key = teacher_images_key(
                    target.teacher_dir, target.teacher_controlnet, prompts, controls, latents, sampling["teacher"], 0
                )
                assert load_teacher_images(folder, key, DEMO_IMAGES) is not None

            key = teacher_images_key(
                target.teacher_dir, target.teacher_controlnet, prompts, controls, latents, sampling["teacher"], 0
            )
            save_teacher_images(folder, key, demo_images)
            teacher_cache_s = min(_timed(from_cache)[1] for _ in range(3))
        scores = np.random.default_rng(0).random((2, DEMO_IMAGES)) + 0.5
        bootstrap_s = _timed(lambda: ratio_interval(scores[0], scores[1]))[1]

        # Scaled to the demo: 256 images, three columns scored (student, teacher, ground truth), 600 oracle steps,
        # bootstrap intervals for the kept metrics (4).
        scale = DEMO_IMAGES / n

        def demo_seconds(sampler: str, oracle: str = "contiguous") -> dict[str, float]:
            out = {
                "teacher_sampling_s": ab["teacher_sampling"]["cases"][sampler]["median_s"] * scale,
                "student_sampling_s": ab["student_sampling"]["cases"][sampler]["median_s"] * scale,
                "oracle_training_s": ab["oracle_training"]["cases"][oracle]["s_per_step"] * ORACLE_STEPS,
                "metrics_s": 3 * sum(per_metric.values()) * scale,
                "bootstrap_s": 4 * bootstrap_s,
            }
            out["total_s"] = sum(out.values())
            return out

        metrics = {
            "ab": ab,
            "per_metric_s": {"images": n, **per_metric},
            "oracle_render_batch_s": render_s,
            "bootstrap_interval_s": bootstrap_s,
            "teacher_images_from_cache_s": teacher_cache_s,
            "demo_estimate": {
                "before (contiguous)": demo_seconds("contiguous"),
                "after (channels_last + control embedding once; oracle trained)": demo_seconds(AFTER),
                "after, oracle from the judge cache (any later evaluation on this machine)": {
                    **demo_seconds(AFTER),
                    "oracle_training_s": 0.0,
                },
                "after, oracle and teacher images from the cache (a later evaluation with the same settings)": {
                    **demo_seconds(AFTER),
                    "oracle_training_s": 0.0,
                    "teacher_sampling_s": teacher_cache_s,
                },
            },
            "load_average_1min_start": load_at_start,
        }
        for k in metrics["demo_estimate"].values():
            k["total_s"] = sum(v for name, v in k.items() if name != "total_s")
        for name, est in metrics["demo_estimate"].items():
            print(f"{name}: " + ", ".join(f"{k} {v:.0f}" for k, v in est.items()))
        print("per metric (s): " + ", ".join(f"{k} {v:.3f}" for k, v in per_metric.items()))
        if results_target is not None:
            path = write_result(
                results_target,
                metrics=metrics,
                config={
                    "run": str(args.run),
                    "images": n,
                    "rounds": args.rounds,
                    "oracle_steps_per_round": args.oracle_steps,
                    "threads": torch.get_num_threads(),
                    "student_sampling": vars(sampling["student"]),
                    "teacher_sampling": vars(sampling["teacher"]),
                },
                seed=0,
                command="python benchmarks/eval_time.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                wall_s=time.perf_counter() - started,
                notes=NOTES,
            )
            print(f"wrote {path}")
        return 0

    return run_cli(body)


NOTES = (
    "demo_estimate: each part timed here on `images` images (sampling: median of the A/B rounds), scaled linearly to "
    "the demo's 256 images and the oracle's 600 steps; metrics are counted three times (student, teacher, ground "
    "truth columns). The oracle is trained once per seed and steps and then reused (run dir, and the judge cache); "
    "the teacher's images once per teacher and settings (teacher_images_from_cache_s: the key's digest and the read "
    "of 256 images). The student's (few-step, LCM) images use a fixed seed for the noise drawn between steps."
)


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    raise SystemExit(main())
