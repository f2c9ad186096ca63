"""Per-image time of a `refine-export --web` folder in headless Chromium (ONNX Runtime Web, WASM) against native
ONNX Runtime on the same machine, same sample (the folder's self-test: prompt, control, draws, steps, guidance).

    python benchmarks/web_latency.py MODEL-web --threads 2 --runs 5 --results-name web/builtin-few-step

The browser side is the page's own self-test (`index.html?selftest=1&runs=N&threads=T&precision=P`), served on
127.0.0.1 with the COOP/COEP headers (so WASM threads are on); it also reports its PSNR against the Python
runtime's image. The native side is `OnnxControlNetPipeline` on the folder's model/ with the same thread count.
Both report the median of N timed runs after one warm-up run. Needs Chromium and the browser test's helpers
(tests/serve/cdp.py, tests/web/static_server.py).
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "tests" / "serve", REPO / "tests" / "web"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from refine_control.cli_utils import offline_env, run_cli, setup_logging  # noqa: E402
from refine_control.errors import ConfigError  # noqa: E402
from refine_control.results import split_results_name  # noqa: E402


def browser_times(web: Path, precision: str, threads: int, runs: int) -> dict[str, Any]:
    from cdp import Browser, Page, find_chromium
    from static_server import StaticServer

    chromium = find_chromium()
    if chromium is None:
        raise ConfigError("Chromium is not installed", hint="apt-get install -y chromium")
    with tempfile.TemporaryDirectory() as profile, StaticServer(web) as server:
        browser = Browser(chromium, Path(profile))
        try:
            page = Page(browser)
            page.navigate(f"{server.url}/index.html?selftest=1&runs={runs}&threads={threads}&precision={precision}")
            text = page.wait_for("document.getElementById('selftest').textContent", timeout=600)
        finally:
            browser.close()
    report = json.loads(text)
    if not report.get("ok"):
        raise ConfigError(f"the browser self-test failed: {report.get('error')}")
    return report


def native_times(web: Path, precision: str, threads: int, runs: int) -> list[float]:
    from refine_control.runtime.pipeline import OnnxControlNetPipeline

    sample = json.loads((web / "selftest" / "sample.json").read_text())
    size = (sample["height"], sample["width"])
    control = np.frombuffer((web / "selftest" / "control.f32").read_bytes(), np.float32).reshape(3, *size)
    control = np.ascontiguousarray(control.transpose(1, 2, 0))
    pipe = OnnxControlNetPipeline(web / "model", precision, num_threads=threads)

    def once() -> float:
        start = time.perf_counter()
        pipe(
            sample["prompt"],
            control,
            sample["negative_prompt"],
            steps=sample["steps"],
            guidance_scale=sample["guidance_scale"],
            seed=sample["seed"],
        )
        return (time.perf_counter() - start) * 1000

    once()  # warm-up, as the browser's first image
    return [once() for _ in range(runs)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/web_latency.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("web", type=Path, help="a folder written by refine-export --web")
    parser.add_argument("--threads", type=int, default=2, help="WASM threads and native ORT intra-op threads")
    parser.add_argument("--runs", type=int, default=5, help="timed images per side (after one warm-up)")
    parser.add_argument("--precision", nargs="+", default=None, help="fp32 / int8 (default: those in the folder)")
    parser.add_argument("--results-name", default=None, help="write results/<group>/<name>.json")
    parser.add_argument("--json", type=Path, default=None, help="write the metrics to this file instead")
    args = parser.parse_args(argv)
    setup_logging(0)
    offline_env()

    def body() -> int:
        target = split_results_name(args.results_name) if args.results_name is not None else None
        sample_path = args.web / "selftest" / "sample.json"
        if not sample_path.is_file():
            raise ConfigError(f"{args.web} is not a refine-export --web folder (no selftest/sample.json)")
        if args.runs < 1 or args.threads < 1:
            raise ConfigError("--runs and --threads must be >= 1")
        sample = json.loads(sample_path.read_text())
        precisions = args.precision or list(sample["references"])
        started = time.perf_counter()
        metrics: dict[str, Any] = {}
        for precision in precisions:
            browser = browser_times(args.web, precision, args.threads, args.runs)
            native = native_times(args.web, precision, args.threads, args.runs)
            native_ms = statistics.median(native)
            metrics[precision] = {
                "browser_ms_per_image": browser["ms_per_image"],
                "browser_first_image_ms": browser["first_image_ms"],
                "browser_load_ms": browser["load_ms"],
                "native_ms_per_image": native_ms,
                "browser_over_native": browser["ms_per_image"] / native_ms,
                "psnr_db_vs_python": browser["psnr_db"],
                "identical_to_python": browser["identical"],
                "backend": browser["backend"],
            }
        config = {
            "threads": args.threads,
            "runs": args.runs,
            "steps": sample["steps"],
            "guidance_scale": sample["guidance_scale"],
            "size": [sample["width"], sample["height"]],
            "scheduler": sample["scheduler"],
        }
        print(json.dumps({"metrics": metrics, "config": config}, indent=1))
        if args.json is not None:
            args.json.write_text(json.dumps({"metrics": metrics, "config": config}, indent=1))
        if target is not None:
            from refine_control.results import write_result

            path = write_result(
                target,
                metrics=metrics,
                config=config,
                seed=sample["seed"],
                command="python " + " ".join(["benchmarks/web_latency.py", *(argv or sys.argv[1:])]),
                wall_s=time.perf_counter() - started,
            )
            print(f"result: {path}")
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
