"""Data-pipeline benchmark: can the loader (decode + resize + preprocessor) feed the training step?

Writes built-in shapes as JPEG parquet shards at `--source-size` (the decode cost of real photos, not of 64 px
PNGs), then measures the samples/s of `refine-distill`'s loader with 0, 2 and 4 data workers (`--num-workers`),
and the step time of a short built-in distillation on the same shards. The loader starves the step when its
samples/s is below the step's.

    python benchmarks/data.py                      # → results/data/loader-builtin.json
    python benchmarks/data.py --workers 0 2 --images 128 --name quick
    python benchmarks/data.py --resolution 512 --no-train --name loader-512   # SD1.5's size: the loader alone

Worker start-up (a fresh interpreter per worker) is reported apart from the steady rate. On a GPU the step is far
faster than here; compare its samples/s with the loader's to size `--num-workers`.
"""

import argparse
import io
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a checkout without installing
    sys.path.insert(0, str(REPO))

from refine_control.cli_utils import offline_env, run_cli  # noqa: E402
from refine_control.results import git_state, write_result  # noqa: E402


def write_shards(out: Path, images: int, source_size: int, shards: int, seed: int) -> Path:
    """Built-in shapes upscaled to `source_size`, JPEG-encoded, as parquet shards with a `text` column."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from refine_control.builtin.shapes import write_image_folder

    folder = write_image_folder(out / "folder", "train", images, seed)
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines() if line.strip()]
    encoded = []
    for row in rows:
        with Image.open(folder / row["file_name"]) as im:
            big = im.convert("RGB").resize((source_size, source_size), Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        big.save(buffer, "JPEG", quality=90)
        encoded.append(({"bytes": buffer.getvalue(), "path": row["file_name"]}, row["text"]))
    target = out / "parquet"
    target.mkdir()
    for s in range(shards):
        part = encoded[s::shards]
        table = pa.table({"image": [e[0] for e in part], "text": [e[1] for e in part]})
        pq.write_table(table, target / f"train-{s:05d}.parquet")
    return target


def loader_rate(data: Path, run: Path, workers: int, batch: int, resolution: int, micro_batches: int) -> dict:
    """Samples/s of the training loader with `workers` data workers: start-up (first micro-batch) and steady rate."""
    from refine_control.data.loader import micro_batches as feed
    from refine_control.data.training_data import open_training_data
    from refine_control.training.config import DistillConfig

    cfg = DistillConfig(run, teacher="builtin", labelled=str(data), batch_size=batch, validate="lazy")
    batches = open_training_data(cfg, run).batches(resolution, 1, 10**9, 0)
    tic = time.perf_counter()
    first = None
    count = 0
    for _ in feed(batches, 0, micro_batches, 1, 0, workers):
        count += 1
        if first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    steady = batch * (count - 1) / (end - first)
    return {"workers": workers, "startup_s": round(first - tic, 3), "samples_per_s": round(steady, 2)}


def train_step(data: Path, run: Path, batch: int, steps: int, seed: int) -> float:
    """Median seconds per optimizer step of a built-in distillation on the shards (data loaded in the step)."""
    from refine_control.cli import main

    argv = [
        "--teacher", "builtin", "--labelled", str(data), "-o", str(run), "--batch-size", str(batch),
        "--max-steps", str(steps), "--stage2-steps", "0", "--log-every", "1", "--warmup-steps", "0",
        "--checkpoint-every", str(steps + 1), "--seed", str(seed), "-q",
    ]  # fmt: skip
    if main(argv) != 0:
        raise SystemExit("the training run failed")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(r["sec_per_step"] for r in rows[2:] or rows)  # the first steps warm caches up


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/data.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=256, help="images in the shards")
    parser.add_argument("--source-size", type=int, default=512, help="stored image size (JPEG)")
    parser.add_argument("--resolution", type=int, default=64, help="training size (the built-in teacher's: 64)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2, 4])
    parser.add_argument("--micro-batches", type=int, default=16, help="micro-batches timed per worker count")
    parser.add_argument("--train-steps", type=int, default=8)
    parser.add_argument("--no-train", action="store_true", help="time the loader only (e.g. at SD1.5's 512 px)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="loader-builtin", help="result name: results/data/NAME.json")
    parser.add_argument("--results-dir", type=Path, default=REPO / "results")
    args = parser.parse_args(argv)
    offline_env()

    def body() -> int:
        commit = git_state()
        wall = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="refine-data-bench-") as tmp:
            tmp_path = Path(tmp)
            data = write_shards(tmp_path, args.images, args.source_size, 4, args.seed)
            loaders = [
                loader_rate(data, tmp_path / f"run-w{k}", k, args.batch_size, args.resolution, args.micro_batches)
                for k in args.workers
            ]
            step_s = None
            if not args.no_train:
                step_s = train_step(data, tmp_path / "train", args.batch_size, args.train_steps, args.seed)
        metrics: dict = {"loader": loaders}
        step_rate = None
        if step_s is not None:
            base = next((r for r in loaders if r["workers"] == 0), None)
            load_s = args.batch_size / base["samples_per_s"] if base else 0.0
            compute_s = max(step_s - load_s, 1e-9)  # the step's own work: its time less the in-step loading
            step_rate = args.batch_size / compute_s
            for r in loaders:
                r["starves_step"] = r["samples_per_s"] < step_rate
            metrics |= {
                "train_step_s": round(step_s, 4),
                "train_step_load_s": round(load_s, 4),
                "train_samples_per_s": round(step_rate, 2),
            }
        config = {k: v for k, v in vars(args).items() if k not in ("results_dir", "name")}
        command = "python benchmarks/data.py " + shlex.join(argv if argv is not None else sys.argv[1:])
        path = write_result(
            ("data", args.name), metrics=metrics, config=config, seed=args.seed, command=command.strip(),
            wall_s=time.perf_counter() - wall, root=args.results_dir, commit=commit,
            notes="loader: parquet shards of JPEGs at source_size, decoded, resized to resolution and passed through "
            "the canny preprocessor; train step: built-in teacher, default student, data loaded in the step with 0 "
            "workers (train_samples_per_s excludes that loading time).",
        )  # fmt: skip
        for r in loaders:
            print(
                f"loader, {r['workers']} workers: {r['samples_per_s']:8.1f} samples/s (start-up {r['startup_s']:.1f} s)"
                f"{'  ← starves the step' if r.get('starves_step') else ''}"
            )
        if step_s is not None:
            print(f"training step: {step_s:.3f} s ({step_rate:.1f} samples/s without loading)")
        print(f"wrote {path}")
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
