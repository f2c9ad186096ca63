"""Where a training step's time goes on this machine, and what the layout options buy (samples/s).

Profiles one step of each recipe stage on the built-in teacher, batch 16 at 64 px, with the modules the trainer
builds: the compact stage (teacher forward with feature taps, student forward + tri-level loss, backward, gradient
clipping + AdamW) and the few-step stage (two guided teacher passes, the target network, the student's consistency
loss, backward, optimiser). The data side is timed on the trainer's own loader (`micro_batches`, 0 workers) and the
VAE encode of an image's first use (cached afterwards).

Then whole steps are timed A/B interleaved round by round (median and IQR over rounds), each stage with a copy of its
baseline as a case of its own: the A-vs-A ratio is the run's noise floor (the machine is shared), and a ratio between
two cases counts only beyond it.

- `contiguous`: every model in the default (NCHW) layout: what the trainer does;
- `teacher channels_last`: the frozen teacher in NHWC (models/layout.py);
- `teacher + student channels_last`: the trained student too (the trainer would have to keep checkpointed and saved
  weights contiguous);
- few-step: the teacher's conditional and unconditional passes as one batch-32 call instead of two of 16;
- the teacher's forward alone, contiguous vs channels_last, with three times the rounds.

The trainer adopts an option only when its speed-up is beyond the noise floor, in the same direction, run after run
(none has so far: see the notes of results/recipe/train-step*.json).

Usage: python benchmarks/train_step.py [--rounds 8] [--results-name recipe/train-step]
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from refine_control.cli_utils import offline_env, run_cli

BATCH = 16
BASELINE_COPY = "(again)"  # the suffix of a stage's A-vs-A case


def _median_iqr(values: list[float]) -> dict[str, float]:
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return {"median_s": statistics.median(values), "iqr_s": q[2] - q[0], "n": len(values)}


Case = tuple[Callable[[], Any], Callable[[], Any]]  # (prepare, untimed; run, timed)


def interleaved(cases: dict[str, Case], rounds: int) -> dict[str, dict[str, float]]:
    """Each round runs every case once, in a rotated order; the first round is a warm-up."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    for r in range(rounds + 1):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            prepare, run = cases[name]
            prepare()
            tic = time.perf_counter()
            run()
            if r:
                times[name].append(time.perf_counter() - tic)
    return {name: _median_iqr(v) for name, v in times.items()}


def with_floor(cases: dict[str, dict[str, float]], batch: int) -> dict[str, Any]:
    """samples/s and the speed-up of each case over the first (the baseline), judged against the A-vs-A floor."""
    names = list(cases)
    base = cases[names[0]]["median_s"]
    copy = next(n for n in names if n.endswith(BASELINE_COPY))
    ratio = base / cases[copy]["median_s"]
    floor = max(ratio, 1 / ratio)
    for m in cases.values():
        m["samples_per_s"] = batch / m["median_s"]
        m["speedup_vs_baseline"] = base / m["median_s"]
        m["beyond_noise_floor"] = max(m["speedup_vs_baseline"], 1 / m["speedup_vs_baseline"]) > floor
    return {
        "cases": cases,
        "noise_floor": {
            "factor": floor,
            "rule": "a speed-up s counts only when max(s, 1/s) > factor (the baseline timed twice, A vs A)",
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=8, help="timed rounds after one warm-up. Default: %(default)s")
    parser.add_argument(
        "--results-name", default=None, metavar="GROUP/NAME", help="also write results/GROUP/NAME.json"
    )
    args = parser.parse_args(argv)
    offline_env()

    def body() -> int:
        import torch

        from refine_control.losses import TriLevelLoss
        from refine_control.models.denoiser import ControlledDenoiser, with_guidance_input
        from refine_control.models.presets import STUDENT_PRESETS, build_student
        from refine_control.models.teacher import load_teacher
        from refine_control.results import split_results_name, write_result
        from refine_control.training.consistency import (
            DDIMSolver,
            consistency_output,
            huber,
            predicted_noise,
            predicted_x0,
        )
        from refine_control.training.distiller import DenoiserInputs, DistillationModule, probe_channels

        target = split_results_name(args.results_name) if args.results_name else None
        load_at_start = round(os.getloadavg()[0], 2)
        started = time.perf_counter()
        torch.manual_seed(0)
        teacher = load_teacher("builtin", None, torch.float32, torch.device("cpu"))
        t_den = ControlledDenoiser(teacher.unet, teacher.controlnet).eval().requires_grad_(False)
        unet, controlnet = build_student(teacher.unet, teacher.controlnet, STUDENT_PRESETS.get("compact-wide"))
        student = ControlledDenoiser(unet, controlnet).train()
        taps = [t for t in student.feature_names(trainable_unet=True) if t in set(t_den.feature_names(True))]
        s_ch, t_ch = probe_channels(student, taps, teacher), probe_channels(t_den, taps, teacher)
        loss = TriLevelLoss((1.0, 1.0, 1.0), {t: (s_ch[t], t_ch[t]) for t in taps}, True)
        module = DistillationModule(student, loss, taps)
        params = [p for p in module.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-4)
        few_unet, few_controlnet = build_student(teacher.unet, teacher.controlnet, STUDENT_PRESETS.get("compact-wide"))
        few = ControlledDenoiser(with_guidance_input(few_unet), few_controlnet).train()
        few_target = ControlledDenoiser(few.unet, few.controlnet)  # weights shared: the cost is what matters here
        few_opt = torch.optim.AdamW(few.parameters(), lr=1e-4)
        schedule = teacher.noise_scheduler()
        solver = DDIMSolver(schedule.alphas_cumprod, 50)
        kind = schedule.config.prediction_type

        res, latent = teacher.resolution, teacher.resolution // teacher.vae_scale_factor
        dim = teacher.unet.config.cross_attention_dim
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(BATCH, 4, latent, latent, generator=gen)
        t = torch.randint(0, 1000, (BATCH,), generator=gen)
        grid_t = solver.timesteps()[torch.randint(0, 50, (BATCH,), generator=gen)]
        text, empty = torch.randn(BATCH, 77, dim, generator=gen), torch.randn(1, 77, dim, generator=gen)
        control = torch.rand(BATCH, 3, res, res, generator=gen)
        target_eps, weight = torch.randn_like(x), torch.ones(BATCH)
        scale = torch.full((BATCH,), 3.0)
        inputs = DenoiserInputs(x, t, text, control, target_eps, weight)
        cl, contiguous = torch.channels_last, torch.contiguous_format

        def layout(teacher_fmt: torch.memory_format, student_fmt: torch.memory_format, *students: Any) -> None:
            t_den.to(memory_format=teacher_fmt)
            for s in students:
                s.to(memory_format=student_fmt)

        # --- the parts of a step, each timed on its own (baseline layout) --------------------------------------
        def teacher_forward(with_taps: bool) -> Any:
            with torch.no_grad():
                return t_den.forward_features(x, t, text, control, taps if with_taps else [])

        def clip_and_step(parameters: list[torch.nn.Parameter], opt: torch.optim.Optimizer) -> None:
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

        def compact_parts() -> dict[str, float]:
            out: dict[str, float] = {}
            tic = time.perf_counter()
            teacher_forward(False)
            out["teacher_forward_s"] = time.perf_counter() - tic
            tic = time.perf_counter()
            t_out = teacher_forward(True)
            out["teacher_forward_with_taps_s"] = time.perf_counter() - tic
            tic = time.perf_counter()
            result = module(inputs, t_out)
            out["student_forward_and_loss_s"] = time.perf_counter() - tic
            tic = time.perf_counter()
            result.total.backward()
            out["backward_s"] = time.perf_counter() - tic
            tic = time.perf_counter()
            clip_and_step(params, optimizer)
            out["clip_and_optimiser_s"] = time.perf_counter() - tic
            return out

        def guided_teacher(batched: bool) -> tuple[torch.Tensor, torch.Tensor]:
            with torch.no_grad():
                if batched:
                    both = t_den(
                        torch.cat([x, x]),
                        torch.cat([grid_t, grid_t]),
                        torch.cat([text, empty.expand_as(text)]),
                        torch.cat([control, control]),
                    )
                    return both.chunk(2)
                return t_den(x, grid_t, text, control), t_den(x, grid_t, empty.expand_as(text), control)

        def few_target_point(cond: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
            alphas = solver.alphas
            w = (scale - 1).view(-1, 1, 1, 1)
            x0c, x0u = predicted_x0(cond, grid_t, x, alphas, kind), predicted_x0(uncond, grid_t, x, alphas, kind)
            ec, eu = predicted_noise(cond, grid_t, x, alphas, kind), predicted_noise(uncond, grid_t, x, alphas, kind)
            previous = solver.step(x0c + w * (x0c - x0u), ec + w * (ec - eu), grid_t)
            with torch.no_grad():
                return consistency_output(
                    few_target, previous, solver.previous(grid_t), text, control, scale, alphas, kind
                )

        def few_parts() -> dict[str, float]:
            out: dict[str, float] = {}
            tic = time.perf_counter()
            cond, uncond = guided_teacher(False)
            out["teacher_two_passes_s"] = time.perf_counter() - tic
            tic = time.perf_counter()
            goal = few_target_point(cond, uncond)
            out["target_network_s"] = time.perf_counter() - tic
            tic = time.perf_counter()
            result = huber(consistency_output(few, x, grid_t, text, control, scale, solver.alphas, kind), goal)
            out["student_forward_and_loss_s"] = time.perf_counter() - tic
            tic = time.perf_counter()
            result.backward()
            out["backward_s"] = time.perf_counter() - tic
            tic = time.perf_counter()
            clip_and_step(list(few.parameters()), few_opt)
            out["clip_and_optimiser_s"] = time.perf_counter() - tic
            return out

        def parts(fn: Callable[[], dict[str, float]]) -> dict[str, float]:
            fn()  # warm-up
            runs = [fn() for _ in range(args.rounds)]
            return {k: statistics.median(r[k] for r in runs) for k in runs[0]}

        layout(contiguous, contiguous, student, few)
        print(f"timing {args.rounds} rounds, batch {BATCH}, {torch.get_num_threads()} threads", flush=True)
        compact_breakdown = parts(compact_parts)
        few_breakdown = parts(few_parts)
        compact_breakdown["data_s"], compact_breakdown["vae_encode_first_use_s"] = _data_side(args.rounds)

        # --- whole steps, A/B interleaved ------------------------------------------------------------------------
        def compact_step(teacher_fmt: torch.memory_format, student_fmt: torch.memory_format) -> Case:
            def step() -> None:
                with torch.no_grad():
                    t_out = t_den.forward_features(x, t, text, control, taps)
                module(inputs, t_out).total.backward()
                clip_and_step(params, optimizer)

            return lambda: layout(teacher_fmt, student_fmt, student), step

        def few_step(teacher_fmt: torch.memory_format, batched: bool) -> Case:
            def step() -> None:
                goal = few_target_point(*guided_teacher(batched))
                huber(consistency_output(few, x, grid_t, text, control, scale, solver.alphas, kind), goal).backward()
                clip_and_step(list(few.parameters()), few_opt)

            return lambda: layout(teacher_fmt, contiguous, few), step

        compact = interleaved(
            {
                "contiguous": compact_step(contiguous, contiguous),
                f"contiguous {BASELINE_COPY}": compact_step(contiguous, contiguous),
                "teacher channels_last": compact_step(cl, contiguous),
                "teacher + student channels_last": compact_step(cl, cl),
            },
            args.rounds,
        )
        few_cases = interleaved(
            {
                "contiguous, two teacher calls": few_step(contiguous, False),
                f"contiguous, two teacher calls {BASELINE_COPY}": few_step(contiguous, False),
                "teacher channels_last, two calls": few_step(cl, False),
                "teacher channels_last, one batched call": few_step(cl, True),
            },
            args.rounds,
        )

        # The frozen teacher's forward alone (the only part its layout changes), more rounds: a tighter A/B.
        def teacher_case(fmt: torch.memory_format) -> Case:
            return lambda: t_den.to(memory_format=fmt), lambda: teacher_forward(True)

        teacher_only = interleaved(
            {
                "contiguous": teacher_case(contiguous),
                f"contiguous {BASELINE_COPY}": teacher_case(contiguous),
                "channels_last": teacher_case(cl),
            },
            3 * args.rounds,
        )

        def shares(parts_s: dict[str, float], teacher_keys: tuple[str, ...]) -> dict[str, float]:
            step = sum(v for k, v in parts_s.items() if k not in ("teacher_forward_s", "vae_encode_first_use_s"))
            return {"teacher_share_of_step": sum(parts_s[k] for k in teacher_keys) / step}

        metrics: dict[str, Any] = {
            "compact_stage": {
                **with_floor(compact, BATCH),
                "parts_s": compact_breakdown,
                **shares(compact_breakdown, ("teacher_forward_with_taps_s",)),
            },
            "few_step_stage": {
                **with_floor(few_cases, BATCH),
                "parts_s": few_breakdown,
                **shares(few_breakdown, ("teacher_two_passes_s",)),
            },
            "teacher_forward_batch16": with_floor(teacher_only, BATCH),
            "load_average_1min_start": load_at_start,
        }
        for stage in ("compact_stage", "few_step_stage"):
            print(f"{stage}: parts (s) " + ", ".join(f"{k} {v:.3f}" for k, v in metrics[stage]["parts_s"].items()))
            for name, m in metrics[stage]["cases"].items():
                print(
                    f"  {name:42s} {m['median_s']:.3f} s/step (IQR {m['iqr_s']:.3f})  "
                    f"{m['samples_per_s']:.1f} samples/s  {m['speedup_vs_baseline']:.2f}x"
                    + ("" if m["beyond_noise_floor"] else "  (within the noise floor)")
                )
            print(f"  noise floor ±{100 * (metrics[stage]['noise_floor']['factor'] - 1):.0f}% (A vs A)")
        for name, m in metrics["teacher_forward_batch16"]["cases"].items():
            print(f"teacher forward {name:30s} {m['median_s']:.3f} s  {m['speedup_vs_baseline']:.2f}x")
        if target is not None:
            path = write_result(
                target,
                metrics=metrics,
                config={"batch": BATCH, "rounds": args.rounds, "threads": torch.get_num_threads()},
                seed=0,
                command="python benchmarks/train_step.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                wall_s=time.perf_counter() - started,
                notes=NOTES,
            )
            print(f"wrote {path}")
        return 0

    return run_cli(body)


NOTES = (
    "Built-in teacher, compact-wide student, batch 16 at 64 px, 2 threads. parts_s: one step's parts timed alone "
    "(median over rounds, baseline layout); data_s: the trainer's loader for one batch (0 workers); "
    "vae_encode_first_use_s: the VAE encode of a batch of images seen for the first time (each image is encoded once "
    "per run, then cached: 500 images per run on the built-in data). cases: whole steps, interleaved. "
    "teacher_share_of_step: the teacher's forward (compact: with feature taps; few-step: its two guided passes) over "
    "the sum of a step's parts (data included): what a fixed pool of precomputed teacher outputs could save at most, "
    "a change of training dynamics (fewer distinct noise/timestep draws) that needs a quality A/B of the recipe."
)


def _data_side(rounds: int) -> tuple[float, float]:
    """Seconds per batch of the trainer's loader (built-in data, 0 workers), and of the VAE encode of a batch of
    images not yet in the latent cache."""
    import torch

    from refine_control.data.loader import micro_batches
    from refine_control.data.training_data import open_training_data
    from refine_control.models.teacher import load_teacher
    from refine_control.training.config import DistillConfig
    from refine_control.training.distiller import Conditioner

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        run.mkdir()
        cfg = DistillConfig(output_dir=run, recipe="guided")
        data = open_training_data(cfg, run)
        batches = data.batches(64, 1, rounds + 2, 0)
        feed = micro_batches(batches, 0, rounds + 2, 1, 0, 0)
        next(feed)
        loads, encodes = [], []
        teacher = load_teacher("builtin", None, torch.float32, torch.device("cpu"))
        conditioner = Conditioner(teacher, torch.device("cpu"), torch.float32, cache_latents=True)
        for _ in range(rounds):
            tic = time.perf_counter()
            batch = next(feed)
            loads.append(time.perf_counter() - tic)
            tic = time.perf_counter()
            conditioner.encode(
                batch.images, batch.captions, batch.controls, [f"{k}-{len(encodes)}" for k in batch.keys]
            )
            encodes.append(time.perf_counter() - tic)
    return statistics.median(loads), statistics.median(encodes)


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    raise SystemExit(main())
