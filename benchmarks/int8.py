"""INT8 on a trained student, as `refine-export --int8` chooses it: which nodes, how much faster, and what the images
keep, recorded as a result file.

    python benchmarks/int8.py runs/cw0 --results-name int8/builtin-compact-wide

Exports RUN with `--int8` (per-node selection judged by images on the calibration samples) into --workdir, then
records the quantiser's report (candidate sets, their speed and image checks, the chosen set) and the parity report
(images on the held-out parity samples: edge F1 of FP32 and INT8, PSNR of INT8 against FP32, and each
denoiser step's time), all from that one export.
"""

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a checkout without installing
    sys.path.insert(0, str(REPO))

from refine_control.cli_utils import offline_env, run_cli, setup_logging  # noqa: E402
from refine_control.results import script_command, split_results_name  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/int8.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a refine-distill run dir")
    parser.add_argument("--workdir", type=Path, default=Path("runs/int8-bench"), help="the model dir written")
    parser.add_argument("--calibration-samples", type=int, default=8)
    parser.add_argument("--parity-samples", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--results-name", default=None, help="write results/<group>/<name>.json")
    args = parser.parse_args(argv)
    setup_logging(0)
    offline_env()

    def body() -> int:
        # (group, name) of the result file, parsed before the run so that a malformed name is refused early
        target = split_results_name(args.results_name) if args.results_name is not None else None
        from refine_control.export.cli import ExportConfig
        from refine_control.export.exporter import export_model
        from refine_control.results import git_state, machine_info, write_result

        commit = git_state()
        started = time.perf_counter()
        if args.workdir.exists():
            shutil.rmtree(args.workdir)
        cfg = ExportConfig(
            run=args.run,
            output_dir=args.workdir,
            int8=True,
            calibration_samples=args.calibration_samples,
            parity_samples=args.parity_samples,
            threads=args.threads,
        )
        result = export_model(cfg)
        int8 = result.manifest["graphs"]["denoiser"].get("int8", {}).get("onnx", {})
        quantization = int8.get("quantization") or result.manifest["export"].get("int8_not_written")
        parity = result.parity
        e2e, latency = parity["end_to_end"], parity["latency_ms_per_denoiser_step"]
        metrics = {
            "int8_written": bool(int8),
            "quantization": quantization,
            "parity": {
                "settings": parity["settings"],
                "passed": parity["passed"],
                "end_to_end": e2e,
                "latency_ms_per_denoiser_step": latency,
            },
        }
        if int8:
            metrics["int8_vs_fp32"] = {
                "step_speedup": round(latency["onnxruntime fp32"] / latency["onnxruntime int8"], 3),
                "edge_f1_ratio": round(e2e["int8"]["edge_f1"] / e2e["fp32"]["edge_f1"], 4),
            }
        print(json.dumps(metrics.get("int8_vs_fp32", {"int8_written": False}), indent=1))
        if target is not None:
            write_result(
                target,
                metrics=metrics,
                config={**cfg.to_json(), "source_run": str(args.run)},
                seed=0,
                command=script_command("benchmarks/int8.py", argv),
                wall_s=time.perf_counter() - started,
                machine=machine_info(cfg.threads),
                commit=commit,
            )
        return 0

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(main())
