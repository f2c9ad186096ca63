"""`make demo` / `python -m refine_control.demo`: the main job end to end on the built-in default.

Distil the shipped shapes teacher into a `controlnet-half` student, score student and teacher with `refine-eval`, export
the student to ONNX + INT8 with its parity report, and print where everything is and how to serve it. Each stage
is the public CLI called in-process, so the demo exercises exactly what a user runs.
"""

import argparse
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from refine_control.cli_utils import run_cli
from refine_control.errors import ConfigError


@dataclass(frozen=True)
class DemoConfig:
    """Sizes chosen so the whole demo takes minutes on 2 CPU cores; the CLIs' own defaults train longer."""

    output_dir: Path = Path("runs/demo")
    student: str = "controlnet-half"  # the compact presets need thousands of steps (README, "The ablation")
    init: str = "leading"
    learning_rate: float = 5e-4
    max_steps: int = 300
    stage2_steps: int = 150
    builtin_labelled: int = 500
    builtin_unlabelled: int = 2500
    eval_samples: int = 128
    seed: int = 0


def build_parser() -> argparse.ArgumentParser:
    d = DemoConfig()
    parser = argparse.ArgumentParser(
        prog="python -m refine_control.demo",
        description="Distil the built-in teacher, evaluate the student against it, export ONNX + INT8 with a "
        "parity report, and print how to serve the result.",
    )
    parser.add_argument("--output-dir", type=Path, default=d.output_dir, help="Default: %(default)s (replaced)")
    parser.add_argument("--max-steps", type=int, default=d.max_steps, help="stage-1 steps. Default: %(default)s")
    parser.add_argument("--stage2-steps", type=int, default=d.stage2_steps, help="stage-2 steps. Default: %(default)s")
    parser.add_argument("--eval-samples", type=int, default=d.eval_samples, help="Default: %(default)s")
    parser.add_argument("--seed", type=int, default=d.seed, help="Default: %(default)s")
    return parser


def _stage(title: str, run: Callable[[list[str]], int], argv: list[str]) -> float:
    print(f"\n=== {title}: {' '.join(argv)}", flush=True)  # noqa: T201 - the demo's narration
    start = time.perf_counter()
    code = run(argv)
    if code != 0:
        raise SystemExit(code)
    return time.perf_counter() - start


def run_demo(cfg: DemoConfig) -> dict[str, float]:
    """Run the three stages; return the seconds each took."""
    from refine_control.cli import main as distill
    from refine_control.evaluation.cli import main as evaluate
    from refine_control.export.cli import main as export

    run, model = cfg.output_dir, cfg.output_dir / "model"
    distill_argv = ["--teacher", "builtin", "-o", str(run), "--overwrite", "--seed", str(cfg.seed), "-q"]
    for flag in (
        "student",
        "init",
        "learning_rate",
        "max_steps",
        "stage2_steps",
        "builtin_labelled",
        "builtin_unlabelled",
    ):
        distill_argv += [f"--{flag.replace('_', '-')}", str(getattr(cfg, flag))]
    eval_argv = [str(run), "--num-samples", str(cfg.eval_samples), "--seed", str(cfg.seed), "-q"]
    seconds = {
        "distil": _stage("1/3 distil (refine-distill)", distill, distill_argv),
        "evaluate": _stage("2/3 evaluate (refine-eval)", evaluate, eval_argv),
        "export": _stage("3/3 export (refine-export)", export, [str(run), "-o", str(model), "--int8", "--overwrite"]),
    }
    return seconds


def _summary(cfg: DemoConfig, seconds: dict[str, float]) -> str:
    run, model = cfg.output_dir, cfg.output_dir / "model"
    metrics = json.loads((run / "eval" / "metrics.json").read_text())["metrics"]
    parity = json.loads((model / "parity.json").read_text())
    latency = parity.get("latency_ms_per_denoiser_step", {})
    lines = ["", "=== done in " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())]
    lines.append(f"student:      {run / 'student'}  (diffusers format; training log {run / 'logs' / 'train.log'})")
    lines.append(f"evaluation:   {run / 'eval' / 'metrics.json'}")
    if "edge_f1" in metrics:
        kept = metrics.get("edge_f1_kept")
        lines.append(
            f"              edge F1 {metrics['edge_f1']:.3f}"
            + (f" ({100 * kept:.0f}% of the teacher's)" if kept else "")
            + f", image PSNR vs teacher {metrics.get('teacher_psnr_db', float('nan')):.1f} dB"
        )
    lines.append(f"exported:     {model}  (parity report {model / 'parity.json'})")
    if latency:
        lines.append("              denoiser step, ms: " + ", ".join(f"{k} {v:.2f}" for k, v in latency.items()))
    # Serve the faster of the two exported denoisers (INT8 is not faster for every student on every CPU).
    int8_faster = latency.get("onnxruntime int8", float("inf")) < latency.get("onnxruntime fp32", float("inf"))
    precision = "int8" if int8_faster else "fp32"
    lines.append(f"serve it:     refine-serve {model} --precision {precision}   (then open http://127.0.0.1:8000/)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        for name in ("max_steps", "eval_samples"):
            if getattr(args, name) < 1:
                raise ConfigError(f"`--{name.replace('_', '-')}` must be >= 1, got {getattr(args, name)}")
        cfg = DemoConfig(
            args.output_dir,
            max_steps=args.max_steps,
            stage2_steps=args.stage2_steps,
            seed=args.seed,
            eval_samples=args.eval_samples,
        )
        print(_summary(cfg, run_demo(cfg)))  # noqa: T201 - the demo's result
        return 0

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(main())
