"""Latency and cost benchmark: teacher vs students × PyTorch FP32 / ONNX Runtime FP32 / ONNX Runtime INT8.

Everything is measured in one run on one machine, with the same inputs and pinned threads:
- per denoiser step (UNet + ControlNet): batch 1, and batch 2 (a classifier-free guidance pair); median, IQR, p90;
- per image, as each model samples: the teacher and ordinary students run the text encoder and `--steps` steps at
  batch 2 (guidance pairs), a few-step student (guidance scale embedded, `Geometry.guidance_embedded`) runs them at
  batch 1 with its run's recommended steps; plus one VAE decode. Teacher ÷ model per image, and the VAE's share;
- parameters, MACs (FlopCounterMode on the meta device), file sizes, peak RSS (each case in its own process),
  and the machine's measured dense-kernel peak.

The timing protocol (`stats`): each case (model × runtime) runs in its own long-lived process, warmed up, then
timed in `--repeats` rounds, one run of every case per round (round-robin), so drifts of a shared machine land on
every case alike; median, IQR and p90 per measurement. One model is timed a second time as a separate case (the
A-vs-A copy): the worst ratio between the two is the run's noise floor, reported in the JSON (`noise_floor`) and the
markdown, and "×" / "faster" are written only for ratios beyond it. The 1-min load average at the start is recorded
(`machine.load_average_1min`), with a warning when it exceeds 0.5 per logical CPU.

Every model is a real `StableDiffusionControlNetPipeline` wrapped as the exporter's `Student`, exported by
`export_graphs` and quantised by `quantize_int8`; sessions come from `ort_session`. No target
is checked: it prints figures, and exits 1 only when every case failed to run.

Modules: `cli` (flags → `BenchConfig`), `cases` (which models, how each is built and sampled), `export` (ONNX and
INT8 files), `worker` (one timed case per process), `machine` (CPU facts, peaks, peak RSS), `run` (the rounds),
`stats` (summaries, the noise floor, the load check), `report` (per-image figures and ratios), `markdown`, `plot`
(matplotlib, optional) and `record` (result file).

    python benchmarks/latency.py --scale builtin --run fs=runs/fs0 --json bench.json --markdown bench.md
    python benchmarks/latency.py --scale sd15 --size 512 --ort-models compact-wide,compact-wide+few-step
"""
