"""Fixed-shape against dynamic-shape ONNX Runtime sessions of an exported model dir, at the model's resolution.

The exported graphs have dynamic batch and spatial axes. ORT can pin them per session by name (free-dimension
overrides), which lets it plan memory and pick kernels for one shape. Each graph of the model dir is timed both
ways on the feeds the runtime gives it at the model's resolution (the denoiser at the batch its sampling uses: 2
with a guidance pair, 1 for a guidance-distilled student), in interleaved rounds, in one process:

    python benchmarks/shapes.py runs/models/builtin --results-name latency/shapes-builtin

The result decides `refine-serve`'s default (serve/settings.py `fixed_shapes`).
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a checkout without installing
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from refine_control.atomic import write_text  # noqa: E402
from refine_control.cli_utils import check_output, offline_env, run_cli  # noqa: E402
from refine_control.results import script_command, split_results_name  # noqa: E402


def feeds_at_resolution(pipe: Any, batch: int) -> dict[str, dict[str, np.ndarray]]:
    """Each graph's inputs at the model's trained resolution, as the runtime builds them."""
    geometry, side = pipe.geometry, pipe.resolution
    rng = np.random.default_rng(0)
    latents = rng.standard_normal(geometry.latent_shape(side, side, batch)).astype(np.float32)
    ids = pipe.prompt_encoder(["a red circle"] * batch)
    text = pipe.encode_prompts(["a red circle"] * batch)
    control = rng.random((batch, geometry.control_channels, side, side), dtype=np.float32)
    denoiser = geometry.denoiser_feeds(latents, np.full((batch,), 500.0, np.float32), text, control, 1.0, 3.0)
    return {
        "text_encoder": {"input_ids": ids},
        "denoiser": denoiser,
        "vae_decoder": {"latent_sample": latents[:1]},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/shapes.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="a refine-export model dir")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads. Default: %(default)s")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds. Default: %(default)s")
    parser.add_argument("--budget-s", type=float, default=0.5, help="seconds per timing. Default: %(default)s")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    parser.add_argument("--results-name", default=None, help="write results/<group>/<name>.json, e.g. latency/x")
    args = parser.parse_args(argv)
    offline_env()

    def body() -> int:
        # (group, name) of the result file, parsed before the run so that a malformed name is refused early
        target = split_results_name(args.results_name) if args.results_name is not None else None
        check_output(args.json)
        from refine_control.results import git_state, machine_info, write_result
        from refine_control.runtime import OnnxControlNetPipeline
        from refine_control.runtime.session import fixed_dims_for, ort_session
        from refine_control.runtime.timing import measure

        commit = git_state()
        started = time.perf_counter()
        base = OnnxControlNetPipeline(args.model, "fp32", num_threads=args.threads)
        batch = 1 if base.geometry.guidance_embedded else 2
        feeds = feeds_at_resolution(base, batch)
        rows: dict[str, Any] = {}
        for precision in base.available_precisions:
            pipe = base if precision == "fp32" else OnnxControlNetPipeline(args.model, precision, num_threads=1)
            for graph, file in pipe.graph_files.items():
                if file in rows:
                    continue
                path = pipe.model.verify(file)
                dynamic = ort_session(path, threads=args.threads)
                dims = fixed_dims_for(dynamic.get_inputs(), feeds[graph])
                fixed = ort_session(path, threads=args.threads, fixed_dims=dims)
                np.testing.assert_allclose(  # the same graph, so the same numbers
                    fixed.run(None, feeds[graph])[0], dynamic.run(None, feeds[graph])[0], rtol=1e-4, atol=1e-4
                )
                times: dict[str, list[float]] = {"dynamic": [], "fixed": []}
                inputs = feeds[graph]
                for _ in range(args.rounds):
                    for kind, session in (("dynamic", dynamic), ("fixed", fixed)):
                        run = measure(lambda s=session, f=inputs: s.run(None, f), warmup=1, budget_s=args.budget_s)
                        times[kind].append(run.median_s * 1000)
                dynamic_ms, fixed_ms = (statistics.median(times[k]) for k in ("dynamic", "fixed"))
                rows[file] = {
                    "graph": graph,
                    "fixed_dims": dims,
                    "dynamic_ms": round(dynamic_ms, 3),
                    "fixed_ms": round(fixed_ms, 3),
                    "fixed_speedup": round(dynamic_ms / fixed_ms, 3),
                }
                print(
                    f"{file:<22} dynamic {dynamic_ms:8.2f} ms   fixed {fixed_ms:8.2f} ms   ×{dynamic_ms / fixed_ms:.3f}"
                )
        report = {"model": str(args.model), "batch": batch, "resolution": base.resolution, "graphs": rows}
        if args.json is not None:
            write_text(args.json, json.dumps(report, indent=2))
        if target is not None:
            write_result(
                target,
                metrics=report,
                config={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                seed=0,
                command=script_command("benchmarks/shapes.py", argv),
                wall_s=time.perf_counter() - started,
                machine=machine_info(args.threads),
                commit=commit,
            )
        return 0

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(main())
