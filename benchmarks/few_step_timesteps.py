"""Why do 1 and 2 steps collapse? A sampling-side probe: the few-step student of a run, at 1, 2 and 4 steps with
the LCM scheduler's default timesteps, with other timesteps of its training grid (the consistency stage's DDIM
grid: 19, 39, ..., 999) and with the predicted x̂₀ clipped, scored against the teacher's 20 guided steps on held-out *validation* shapes (never test),
so that a schedule chosen here can be scored on test later without having been chosen on it.

    python benchmarks/few_step_timesteps.py runs/demo --samples 64 --results-name few_step/timesteps-val

For each schedule: pixel-exact (ControlNet++ protocol) edge F1, precision and recall, the 1-px F1, mask IoU and the
colour error ΔE, and the strict F1 as a share of the teacher's on the same images and initial noise.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a checkout without installing
    sys.path.insert(0, str(REPO))

from refine_control.cli_utils import offline_env, run_cli  # noqa: E402
from refine_control.results import script_command, split_results_name  # noqa: E402

# name -> (steps, timesteps or None for the scheduler's own, x̂₀ clip range or None). The timesteps lie on the
# consistency stage's grid; the clip is LCMScheduler's `clip_sample` on the predicted x̂₀ (latent units).
SCHEDULES: dict[str, tuple[int, list[int] | None, float | None]] = {
    "1 step": (1, None, None),
    "1 step, t=759": (1, [759], None),
    "1 step, t=639": (1, [639], None),
    "1 step, t=499": (1, [499], None),
    "2 steps": (2, None, None),
    "2 steps, clip 2": (2, None, 2.0),
    "2 steps, t=999,759": (2, [999, 759], None),
    "2 steps, t=759,259": (2, [759, 259], None),
    "2 steps, t=759,379": (2, [759, 379], None),
    "2 steps, t=759,499": (2, [759, 499], None),
    "2 steps, t=639,259": (2, [639, 259], None),
    "3 steps": (3, None, None),
    "3 steps, t=759,499,259": (3, [759, 499, 259], None),
    "3 steps, t=759,519,259": (3, [759, 519, 259], None),
    "4 steps": (4, None, None),
    "4 steps, t=759,499,259,139": (4, [759, 499, 259, 139], None),
    "4 steps, t=759,579,379,199": (4, [759, 579, 379, 199], None),
}
# What a few-step student now recommends (runtime/schedulers.py `lcm_start_timestep`: LCM's spacing over the grid
# timesteps at or below 759 on the built-in schedule) is one of these at every step count: 759 | 759,379 |
# 759,519,259 | 759,579,379,199.


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/few_step_timesteps.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a run whose student/ is a few-step (LCM) student, e.g. runs/demo")
    parser.add_argument("--samples", type=int, default=64, help="validation shapes. Default: %(default)s")
    parser.add_argument("--split", default="val", help="shapes split: choose on val, report on test. Default: val")
    parser.add_argument("--only", nargs="+", default=None, help="schedule names to score (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="shapes and initial noise. Default: %(default)s")
    parser.add_argument("--results-name", default=None, help="write results/<group>/<name>.json")
    args = parser.parse_args(argv)
    offline_env()

    def body() -> int:
        from refine_control.builtin import builtin_teacher_dir
        from refine_control.builtin.shapes import BACKGROUND, make_sample, sample_specs
        from refine_control.evaluation import metrics as M
        from refine_control.evaluation.bootstrap import ratio_interval
        from refine_control.evaluation.generate import Sampling, generate, initial_noise
        from refine_control.models.pipeline_dir import load_pipeline, read_recommendation
        from refine_control.results import git_state, write_result

        target = split_results_name(args.results_name) if args.results_name else None
        commit, started = git_state(), time.perf_counter()
        samples = [make_sample(s) for s in sample_specs(args.split, args.samples, args.seed)]
        prompts = [s.caption for s in samples]
        controls = np.stack([s.control for s in samples])
        truth, masks = np.stack([s.image for s in samples]), np.stack([s.mask for s in samples])
        student = load_pipeline(args.run / "student")
        guidance = read_recommendation(args.run / "student").guidance_scale
        latents = initial_noise(student, len(samples), controls.shape[1], args.seed)
        teacher = load_pipeline(builtin_teacher_dir())

        def scores(images: np.ndarray) -> dict[str, np.ndarray]:
            """Per-image values of each metric."""
            out = M.edge_scores(images, controls[..., 0] > 0.5, strict=True)
            iou = [M.mask_iou(M.foreground_mask(i, BACKGROUND), m) for i, m in zip(images, masks, strict=True)]
            delta_e = [M.colour_error(i, t, m) for i, t, m in zip(images, truth, masks, strict=True)]
            return out | {"mask_iou": np.array(iou), "colour_delta_e": np.array(delta_e)}

        def means(values: dict[str, np.ndarray]) -> dict[str, float]:
            return {name: float(np.mean(v)) for name, v in values.items()}

        teacher_values = scores(generate(teacher, prompts, controls, latents, Sampling(20, 3.0), seed=args.seed))
        reference = means(teacher_values)
        print(f"teacher (20 guided steps): strict F1 {reference['edge_f1_strict']:.3f}")
        rows = {}
        scheduler_config = dict(student.scheduler.config)
        for name in args.only or SCHEDULES:
            steps, timesteps, clip = SCHEDULES[name]
            clipping = {"clip_sample": clip is not None, "clip_sample_range": clip or 1.0}
            student.scheduler = type(student.scheduler).from_config({**scheduler_config, **clipping})
            chosen = Sampling(steps, guidance, timesteps=None if timesteps is None else tuple(timesteps))
            values = scores(generate(student, prompts, controls, latents, chosen, args.seed))
            row: dict = means(values)
            row["timesteps"], row["clip_sample_range"] = [int(t) for t in student.scheduler.timesteps], clip
            for metric in ("edge_f1_strict", "mask_iou"):
                row[f"{metric}_kept"] = row[metric] / reference[metric]
                row[f"{metric}_kept_interval"] = list(ratio_interval(values[metric], teacher_values[metric]))
            rows[name] = row
            print(
                f"{name:<27} t={row['timesteps']}  strict F1 {row['edge_f1_strict']:.3f} "
                f"({100 * row['edge_f1_strict_kept']:.0f}% of the teacher's)  P {row['edge_precision_strict']:.3f} "
                f"R {row['edge_recall_strict']:.3f}  IoU {row['mask_iou']:.3f}  ΔE {row['colour_delta_e']:.1f}"
            )
        if target is not None:
            write_result(
                target,
                metrics={"teacher": reference, "schedules": rows},
                config={
                    "run": str(args.run),
                    "split": args.split,
                    "samples": args.samples,
                    "guidance_scale": guidance,
                },
                seed=args.seed,
                command=script_command("benchmarks/few_step_timesteps.py", argv),
                wall_s=time.perf_counter() - started,
                commit=commit,
            )
        return 0

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(main())
