"""`make demo` / `python -m refine_control.demo`: the main job end to end on the built-in default.

Distil the shipped shapes teacher with the default recipe (`refine-distill` defaults: the compact student, then its
few-step student, then a tiny decoder where it pays), score the result with `refine-eval` at its own recommended
sampling against the teacher's 20 guided steps, export it to ONNX (+ INT8 where INT8 is faster and accurate) with
its parity report, time teacher and student images in ONNX Runtime with `benchmarks/latency.py`, and print them side
by side with the `refine-serve` command. Each stage is the public CLI, so the demo exercises exactly what a user
runs.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from refine_control.cli_parser import add_output, new_parser
from refine_control.cli_utils import run_cli
from refine_control.errors import ConfigError
from refine_control.results import write_result

LATENCY_SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "latency.py"


@dataclass(frozen=True)
class DemoConfig:
    """The demo runs the CLIs' own defaults; only where it writes, the seed and the evaluation size are its own."""

    output_dir: Path = Path("runs/demo")
    eval_samples: int = 256
    seed: int = 0
    max_steps: int | None = None  # None: refine-distill's default (the compact stage)
    stage2_steps: int | None = None  # None: refine-distill's default
    few_step_steps: int | None = None  # None: refine-distill's default
    teacher_steps: int = 20  # the teacher samples 20 steps with guidance pairs (refine-eval's default)
    reuse: bool = False  # keep the stages finished in output_dir (their recorded seconds are reported)


def build_parser() -> argparse.ArgumentParser:
    d = DemoConfig()
    parser = new_parser(
        "python -m refine_control.demo",
        description="Distil the built-in teacher with the default recipe (compact, then few-step student), evaluate it "
        "against the teacher, "
        "export ONNX + INT8 with a parity report, time teacher and student in ONNX Runtime, and print them side by "
        "side with the command that serves the student.",
    )
    add_output(parser, "where the demo's run goes (replaced)", "--output-dir", dest="output_dir", type=Path,
               default=d.output_dir, metavar="RUN")  # fmt: skip
    parser.add_argument("--max-steps", type=int, default=None, help="compact-stage steps. Default: refine-distill's")
    parser.add_argument("--stage2-steps", type=int, default=None, help="stage-2 steps. Default: refine-distill's")
    parser.add_argument("--few-step-steps", type=int, default=None, help="few-step stage. Default: refine-distill's")
    parser.add_argument("--eval-samples", type=int, default=d.eval_samples, help="images refine-eval scores")
    parser.add_argument("--seed", type=int, default=d.seed, help="seed of the distillation and the evaluation")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="keep the stages already finished in --output (the distillation, then the evaluation and the export "
        "when made from that student with the same settings) instead of running them again; the seconds they "
        "recorded are reported",
    )
    return parser


def _stage(title: str, run: Callable[[list[str]], int], argv: list[str]) -> float:
    print(f"\n=== {title}: {' '.join(argv)}", flush=True)  # noqa: T201 - the demo's narration
    start = time.perf_counter()
    code = run(argv)
    if code != 0:
        raise SystemExit(code)
    return time.perf_counter() - start


def _web_ready() -> bool:
    from refine_control.errors import ConfigError
    from refine_control.export.web import check_web_source

    try:
        check_web_source()
    except ConfigError:
        return False
    return True


def _latency(argv: list[str]) -> int:
    """The latency benchmark is a script of the repository, run in its own process (it starts workers)."""
    return subprocess.call([sys.executable, str(LATENCY_SCRIPT), *argv])


STAGES_FILE = "demo_stages.json"  # the seconds of each stage the demo finished in RUN, for `--reuse`


def _newer_than_student(path: Path, run: Path) -> bool:
    student = run / "student" / "model_index.json"
    return path.is_file() and student.is_file() and path.stat().st_mtime >= student.stat().st_mtime


def reusable(stage: str, cfg: DemoConfig, web: bool) -> bool:
    """Whether `--reuse` keeps a stage: its outputs exist, were made from the current student and with the demo's
    settings."""
    run = cfg.output_dir
    if stage == "distil":
        from refine_control.training.run_dir import is_finished

        return is_finished(run)
    if stage == "evaluate":
        report = run / "eval" / "metrics.json"
        if not _newer_than_student(report, run):
            return False
        got = json.loads(report.read_text())
        same = (got.get("num_samples"), got.get("seed"), got.get("sampling", {}).get("teacher_steps"))
        return same == (cfg.eval_samples, cfg.seed, cfg.teacher_steps)
    if stage == "export":
        made = _newer_than_student(run / "model" / "manifest.json", run)
        return made and (not web or (run / "web" / "model" / "manifest.json").is_file())
    return False


def distill_argv(cfg: DemoConfig) -> list[str]:
    """The demo's `refine-distill` command line: the defaults on the built-in teacher, with the demo's seed."""
    argv = ["--teacher", "builtin", "-o", str(cfg.output_dir), "--overwrite", "--seed", str(cfg.seed), "-q"]
    for flag in ("max_steps", "stage2_steps", "few_step_steps"):
        if getattr(cfg, flag) is not None:
            argv += [f"--{flag.replace('_', '-')}", str(getattr(cfg, flag))]
    return argv


def eval_argv(cfg: DemoConfig) -> list[str]:
    """The demo's `refine-eval` command line: the student samples as it recommends (its sampling.json), the
    teacher 20 steps with guidance pairs."""
    run = cfg.output_dir
    argv = [str(run), "--num-samples", str(cfg.eval_samples), "--seed", str(cfg.seed), "-q"]
    return [*argv, "--teacher-steps", str(cfg.teacher_steps), "--grid", str(run / "eval" / "samples.png")]


def run_demo(cfg: DemoConfig) -> tuple[dict[str, float], list[str]]:
    """Run the four stages; return the seconds each took (a reused one: those it recorded) and the reused ones."""
    from refine_control.atomic import write_json
    from refine_control.cli import main as distill
    from refine_control.evaluation.cli import main as evaluate
    from refine_control.export.cli import main as export

    run, model, web = cfg.output_dir, cfg.output_dir / "model", _web_ready()
    export_argv = [str(run), "-o", str(model), "--int8", "--overwrite", *(["--web", str(run / "web")] if web else [])]
    latency_argv = ["--scale", "builtin", "--presets", "none", "--run", f"student={run}", "--runtimes", "ort-fp32"]
    latency_argv += ["--steps", str(cfg.teacher_steps), "--repeats", "5", "--warmup", "1"]
    latency_argv += ["--json", str(run / "latency.json")]
    stages: list[tuple[str, str, Callable[[list[str]], int], list[str]]] = [
        ("distil", "1/4 distil (refine-distill)", distill, distill_argv(cfg)),
        ("evaluate", "2/4 evaluate (refine-eval)", evaluate, eval_argv(cfg)),
        ("export", "3/4 export (refine-export)", export, export_argv),
    ]
    recorded_file = run / STAGES_FILE
    recorded = json.loads(recorded_file.read_text()) if cfg.reuse and recorded_file.is_file() else {}
    if cfg.reuse and "distil" not in recorded and reusable("distil", cfg, web):  # a run the demo did not make
        recorded["distil"] = float(sum(json.loads((run / "metrics.json").read_text()).get("seconds", {}).values()))
    seconds: dict[str, float] = {}
    reused: list[str] = []
    for name, title, command, argv in stages:
        if cfg.reuse and len(reused) == len(seconds) and name in recorded and reusable(name, cfg, web):
            print(f"\n=== {title.split()[0]} {name}: reusing the finished stage in {run}")  # noqa: T201
            seconds[name] = recorded[name]
            reused.append(name)
            continue
        seconds[name] = _stage(title, command, argv)
        write_json(recorded_file, seconds)
    if LATENCY_SCRIPT.is_file():
        seconds["measure"] = _stage("4/4 measure (benchmarks/latency.py)", _latency, latency_argv)
    else:
        print(f"\n=== 4/4 measure: skipped, {LATENCY_SCRIPT} is not here (run the demo from a checkout)")  # noqa: T201
    return seconds, reused


QUALITY_LABELS = {
    "edge_f1_strict": "edge F1 (strict)",
    "edge_f1": "edge F1 (1 px)",
    "mask_iou": "mask IoU",
    "colour_acc": "colour accuracy",
    "shape_acc": "shape accuracy",
}
QUALITY_KEYS = tuple(QUALITY_LABELS)


def compare(eval_report: dict[str, Any], latency: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Teacher vs student from the same runs: quality from refine-eval, sampling, MACs and ORT FP32 seconds per
    image from the latency benchmark (each model at its own steps: the teacher's guided 20, the student's own)."""
    student, teacher = eval_report["metrics"], eval_report["columns"]["teacher"]
    sampling = eval_report["sampling"]
    out: dict[str, dict[str, Any]] = {
        "teacher": {k: teacher[k] for k in QUALITY_KEYS if k in teacher},
        "student": {k: student[k] for k in (*QUALITY_KEYS, "teacher_psnr_db") if k in student},
    }
    out["teacher"]["steps"], out["teacher"]["guidance_scale"] = (
        sampling["teacher_steps"],
        sampling["teacher_guidance_scale"],
    )
    out["student"]["steps"], out["student"]["guidance_scale"] = sampling["steps"], sampling["guidance_scale"]
    out["student"]["intervals"] = {
        k: v for k, v in student.get("intervals", {}).items() if k.removesuffix("_kept") in QUALITY_KEYS
    }
    if latency is not None:
        for model in ("teacher", "student"):
            found = [r for r in latency["per_image"] if r["model"] == model and r["runtime"] == "ort-fp32"]
            if found:
                out[model]["macs_per_image"] = found[0]["gmacs_image"] * 1e9
                out[model]["ort_fp32_s_per_image"] = found[0]["image_s"]
                out[model]["ort_fp32_iqr_s"] = found[0].get("image_iqr_s")
                out[model]["guidance"] = found[0]["guidance"]
        floor = latency.get("noise_floor")
        out["student"]["noise_floor"] = None if floor is None else floor["factor"]  # A-vs-A: same model twice
    return out


def side_by_side(comparison: dict[str, dict[str, Any]], samples: int) -> list[str]:
    """The comparison as aligned text lines."""
    teacher, student = comparison["teacher"], comparison["student"]

    def sampled(m: dict[str, Any]) -> str:
        pair = m.get("guidance", "pair") == "pair"
        return f"{m['steps']} steps" + (" ×2 (guidance pair)" if pair else " ×1 (scale as input)")

    rows: list[tuple[str, str, str, str]] = []
    if "steps" in student:  # results recorded before the fast recipe did not record the sampling
        rows.append(("sampling", sampled(teacher), sampled(student), ""))
    if "macs_per_image" in student:
        t, s = teacher["macs_per_image"], student["macs_per_image"]
        rows.append(("GMAC per image", f"{t / 1e9:.2f}", f"{s / 1e9:.2f}", f"{t / s:.1f}× fewer"))
    if "ort_fp32_s_per_image" in student and "ort_fp32_s_per_image" in teacher:
        t, s = teacher["ort_fp32_s_per_image"], student["ort_fp32_s_per_image"]
        floor = student.get("noise_floor")
        # "faster" only beyond the run's A-vs-A noise floor (the same model timed as two cases).
        claim = f"{t / s:.1f}× faster" if floor is None or max(t / s, s / t) > floor else f"≈ ({t / s:.2f}, noise)"
        rows.append(("ORT FP32 s per image", f"{t:.3f}", f"{s:.3f}", claim))
        if floor is not None:
            rows.append(("timing noise floor", "", "", f"±{100 * (floor - 1):.0f}% (A vs A)"))
    intervals = student.get("intervals", {})
    for key, label in QUALITY_LABELS.items():
        if key in student and teacher.get(key):
            kept = f"{100 * student[key] / teacher[key]:.0f}% kept"
            if f"{key}_kept" in intervals:  # paired bootstrap 95% interval over the evaluation images
                low, high = intervals[f"{key}_kept"]
                kept += f" [{100 * low:.0f}–{100 * high:.0f}%]"
            rows.append((label, f"{teacher[key]:.3f}", f"{student[key]:.3f}", kept))
    if "teacher_psnr_db" in student:
        rows.append(("PSNR vs teacher (dB)", "-", f"{student['teacher_psnr_db']:.1f}", "same noise"))
    head = ("", "teacher", "student", "")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [head, *rows]]
    note = f"{samples} held-out test shapes, the same prompts, controls and initial noise for both; [95% interval]"
    return [*lines, note + (", timed in ONNX Runtime FP32 on this machine" if "macs_per_image" in student else "")]


def _summary(cfg: DemoConfig, seconds: dict[str, float], reused: list[str], load_at_start: float) -> str:
    """Print-ready summary; also records the run's figures as a result file (RUN/results/demo/make-demo.json)."""
    run, model = cfg.output_dir, cfg.output_dir / "model"
    eval_report = json.loads((run / "eval" / "metrics.json").read_text())
    latency_path = run / "latency.json"
    latency = json.loads(latency_path.read_text()) if latency_path.is_file() else None
    parity = json.loads((model / "parity.json").read_text())
    comparison = compare(eval_report, latency)
    step_ms = parity.get("latency_ms_per_denoiser_step", {})
    write_result(
        ("demo", "make-demo"),
        metrics={
            **comparison,
            "seconds": seconds,
            "reused": reused,
            "denoiser_step_ms": step_ms,
            "load_average_start": load_at_start,
        },
        config={**asdict(cfg), "output_dir": str(cfg.output_dir)},
        seed=cfg.seed,
        command="python -m refine_control.demo --reuse" if cfg.reuse else "make demo",
        wall_s=sum(v for k, v in seconds.items() if k not in reused),
        root=run / "results",
    )
    done = ", ".join(f"{k} {v:.0f} s" + (" (recorded)" if k in reused else "") for k, v in seconds.items())
    lines = ["", "=== done in " + done]
    lines += ["", "teacher vs student (same prompts, controls and noise):"]
    lines += ["  " + line for line in side_by_side(comparison, eval_report["num_samples"])]
    lines.append("")
    lines.append(f"student:      {run / 'student'}  (diffusers format; its stages in {run / 'stages'})")
    lines.append(f"evaluation:   {run / 'eval' / 'metrics.json'}  (samples: {run / 'eval' / 'samples.png'})")
    lines.append(f"exported:     {model}  (parity report {model / 'parity.json'})")
    if step_ms:
        lines.append("              denoiser step, ms: " + ", ".join(f"{k} {v:.2f}" for k, v in step_ms.items()))
    web = run / "web"
    # refine-serve picks the fastest precision that passed parity by itself.
    lines.append(f"serve it:     refine-serve {model}   (then open http://127.0.0.1:8000/)")
    if web.is_dir():
        lines.append(f"browser:      {web}  (the model runs in the page; nothing is sent anywhere)")
        lines.append(f"              refine-serve {model} --web {web}   (then open http://127.0.0.1:8000/device/;")
        lines.append("              from a phone: serve it over https, see docs/serve.md; ?selftest=1 checks it)")
    else:
        lines.append("browser:      not written (run `npm ci --prefix web`, then refine-export ... --web)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        for name in ("max_steps", "few_step_steps", "eval_samples"):
            value = getattr(args, name)
            if value is not None and value < 1:
                raise ConfigError(f"`--{name.replace('_', '-')}` must be >= 1, got {value}")
        from refine_control.evaluation.evaluate import MIN_FID_SAMPLES

        if args.eval_samples < MIN_FID_SAMPLES:  # refine-eval would refuse it only after the distillation
            raise ConfigError(
                f"`--eval-samples` {args.eval_samples} is too few for the domain FID; use >= {MIN_FID_SAMPLES}"
            )
        cfg = DemoConfig(
            args.output_dir,
            eval_samples=args.eval_samples,
            seed=args.seed,
            max_steps=args.max_steps,
            stage2_steps=args.stage2_steps,
            few_step_steps=args.few_step_steps,
            reuse=args.reuse,
        )
        load_at_start = round(os.getloadavg()[0], 2)  # the result file records the load at the end too
        print(_summary(cfg, *run_demo(cfg), load_at_start))  # noqa: T201 - the demo's result
        return 0

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(main())
