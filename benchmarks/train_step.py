"""Where a training step's time goes on this machine, and what the teacher-side options buy (samples/s).

Profiles one step of each trainer stage on the built-in teacher, batch 16 at 64 px: the compact stage (teacher forward
with feature taps, student forward + backward with the tri-level loss, optimizer) and the few-step stage (two
guided teacher passes, the target network, the student's consistency loss). Then times the options that do not
change what is computed, A/B interleaved round by round (median and IQR over rounds):

- `contiguous` vs `channels_last`: the frozen teacher's weights and inputs in NHWC memory format;
- few-step only: the teacher's conditional and unconditional passes as two batch-16 calls vs one batch-32 call.

Usage: python benchmarks/train_step.py [--rounds 8] [--results-name recipe/train-step]
"""

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from refine_control.cli_utils import offline_env, run_cli

BATCH = 16


def _median_iqr(values: list[float]) -> dict[str, float]:
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return {"median_s": statistics.median(values), "iqr_s": q[2] - q[0], "n": len(values)}


def _interleaved(cases: dict[str, Callable[[], None]], rounds: int) -> dict[str, dict[str, float]]:
    """Each round runs every case once, in a rotated order; the first round is a warm-up."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    for r in range(rounds + 1):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            tic = time.perf_counter()
            cases[name]()
            if r:
                times[name].append(time.perf_counter() - tic)
    return {name: _median_iqr(v) for name, v in times.items()}


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

        from refine_control.consistency import DDIMSolver, consistency_output, huber, predicted_noise, predicted_x0
        from refine_control.distiller import DistillationModule, probe_channels
        from refine_control.losses import TriLevelLoss
        from refine_control.models.denoiser import ControlledDenoiser, with_guidance_input
        from refine_control.models.presets import STUDENT_PRESETS, build_student
        from refine_control.models.teacher import load_teacher
        from refine_control.results import split_results_name, write_result

        target = split_results_name(args.results_name) if args.results_name else None
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
        optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)
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

        def formatted(fmt: torch.memory_format):
            t_den.to(memory_format=fmt)
            return x.contiguous(memory_format=fmt), control.contiguous(memory_format=fmt)

        def stage1(fmt: torch.memory_format) -> Callable[[], None]:
            def step() -> None:
                xs, cs = formatted(fmt)
                with torch.no_grad():
                    t_out = t_den.forward_features(xs, t, text, cs, taps)
                from refine_control.distiller import DenoiserInputs

                out = module(DenoiserInputs(x, t, text, control, target_eps, weight), t_out)
                out.total.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

            return step

        def guided_teacher(fmt: torch.memory_format, batched: bool) -> tuple[torch.Tensor, torch.Tensor]:
            xs, cs = formatted(fmt)
            with torch.no_grad():
                if batched:
                    both = t_den(
                        torch.cat([xs, xs]),
                        torch.cat([grid_t, grid_t]),
                        torch.cat([text, empty.expand_as(text)]),
                        torch.cat([cs, cs]),
                    )
                    return both.chunk(2)
                return t_den(xs, grid_t, text, cs), t_den(xs, grid_t, empty.expand_as(text), cs)

        def few_step(fmt: torch.memory_format, batched: bool) -> Callable[[], None]:
            def step() -> None:
                cond, uncond = guided_teacher(fmt, batched)
                alphas = solver.alphas
                w = (scale - 1).view(-1, 1, 1, 1)
                x0c, x0u = predicted_x0(cond, grid_t, x, alphas, kind), predicted_x0(uncond, grid_t, x, alphas, kind)
                ec, eu = (
                    predicted_noise(cond, grid_t, x, alphas, kind),
                    predicted_noise(uncond, grid_t, x, alphas, kind),
                )
                previous = solver.step(x0c + w * (x0c - x0u), ec + w * (ec - eu), grid_t)
                with torch.no_grad():
                    goal = consistency_output(
                        few_target, previous, solver.previous(grid_t), text, control, scale, alphas, kind
                    )
                out = huber(consistency_output(few, x, grid_t, text, control, scale, alphas, kind), goal)
                out.backward()
                few_opt.step()
                few_opt.zero_grad(set_to_none=True)

            return step

        cl, contiguous = torch.channels_last, torch.contiguous_format
        print(f"timing {args.rounds} interleaved rounds, batch {BATCH}, {torch.get_num_threads()} threads", flush=True)
        compact = _interleaved({"contiguous": stage1(contiguous), "channels_last": stage1(cl)}, args.rounds)
        few_res = _interleaved(
            {
                "contiguous, two calls": few_step(contiguous, False),
                "contiguous, one batched call": few_step(contiguous, True),
                "channels_last, two calls": few_step(cl, False),
                "channels_last, one batched call": few_step(cl, True),
            },
            args.rounds,
        )
        metrics = {"compact_stage": compact, "few_step_stage": few_res}
        for stage, cases in metrics.items():
            base = next(iter(cases.values()))["median_s"]
            for name, m in cases.items():
                m["samples_per_s"] = BATCH / m["median_s"]
                m["speedup_vs_first"] = base / m["median_s"]
                print(
                    f"{stage:15s} {name:32s} {m['median_s']:.3f} s/step (IQR {m['iqr_s']:.3f})  {m['samples_per_s']:.1f} samples/s  {m['speedup_vs_first']:.2f}x"
                )
        if target is not None:
            path = write_result(
                target,
                metrics=metrics,
                config={"batch": BATCH, "rounds": args.rounds, "threads": torch.get_num_threads()},
                seed=0,
                command="python benchmarks/train_step.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                wall_s=time.perf_counter() - started,
            )
            print(f"wrote {path}")
        return 0

    return run_cli(body)


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    raise SystemExit(main())
