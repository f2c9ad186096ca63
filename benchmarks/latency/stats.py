"""The timing protocol's arithmetic: summaries of repeated timings, the A-vs-A noise floor, when a ratio may be
called a speed-up, and the load check at the start of a run.

Every case is timed in rounds (one repeat of every case per round, round-robin), so slow drifts of the machine
(other jobs starting or stopping) land on every case alike. The same model is also timed as two separate cases (A
and its copy A'): the largest ratio between their medians is the run's noise floor, and a ratio between two other
cases is reported as a difference ("×", "faster") only when it lies outside [1 / floor, floor].
"""

import math
import os
import statistics
from typing import Any

LOAD_PER_CORE_WARNING = 0.5  # a 1-min load average above this per logical CPU: other work shares the cores


def summarise(samples: list[float]) -> dict[str, Any]:
    """Median, p90, mean, quartiles and IQR of one measurement's repeats (seconds); `samples_s` keeps them in the
    order they were taken (round by round)."""
    if not samples:
        raise ValueError("no timing samples")
    ordered = sorted(samples)
    q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive") if len(ordered) > 1 else ordered * 3
    return {
        "median_s": statistics.median(ordered),
        "p90_s": ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))],
        "mean_s": statistics.fmean(ordered),
        "q1_s": q1,
        "q3_s": q3,
        "iqr_s": q3 - q1,
        "n": len(ordered),
        "samples_s": list(samples),
    }


def timings(case: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every summarised measurement of a case by a flat name: `denoiser 64 b2`, `text_encoder b2`, `vae_decode 64`."""
    out = {}
    for size, batches in case.get("denoiser", {}).items():
        out |= {f"denoiser {size} b{batch}": t for batch, t in batches.items()}
    out |= {f"text_encoder b{batch}": t for batch, t in case.get("text_encoder", {}).items()}
    out |= {f"vae_decode {size}": t for size, t in case.get("vae_decode", {}).items()}
    return out


def noise_floor(original: dict[str, Any], copy: dict[str, Any], model: str, runtime: str) -> dict[str, Any]:
    """The A-vs-A floor: per measurement, A's median ÷ A′'s; the floor is the largest deviation from 1 (either way,
    as a factor ≥ 1) among the denoiser steps, which make up the per-step ratios and nearly all of an image (the
    text encoder's and VAE's few-ms timings are noisier and are listed, not counted), or among all measurements
    when the case has no denoiser."""
    a, b = timings(original), timings(copy)
    ratios = {name: a[name]["median_s"] / b[name]["median_s"] for name in a if name in b and b[name]["median_s"] > 0}
    if not ratios:
        raise ValueError(f"{model} {runtime}: no measurement timed in both copies")
    counted = [name for name in ratios if name.startswith("denoiser")] or list(ratios)
    factor = math.exp(max(abs(math.log(ratios[name])) for name in counted))
    return {
        "model": model,
        "runtime": runtime,
        "ratios": ratios,
        "counted": counted,
        "factor": factor,
        "percent": 100 * (factor - 1),
        "copy": copy,
        "rule": "a ratio r between two timings of this run is called a difference only when max(r, 1/r) > factor",
    }


def beyond(ratio: float | None, floor: dict[str, Any] | None) -> bool:
    """Whether `ratio` (a ÷ b of two timings) lies outside the run's A-vs-A noise floor. No floor measured: never."""
    if ratio is None or ratio <= 0 or floor is None:
        return False
    return max(ratio, 1 / ratio) > floor["factor"]


def load_check(logical_cpus: int | None) -> tuple[float | None, str | None]:
    """The 1-min load average now, and a warning when it exceeds `LOAD_PER_CORE_WARNING` per logical CPU."""
    if not hasattr(os, "getloadavg"):
        return None, None
    load = os.getloadavg()[0]
    cpus = logical_cpus or os.cpu_count() or 1
    if load > LOAD_PER_CORE_WARNING * cpus:
        return load, (
            f"1-min load average {load:.2f} on {cpus} logical CPUs (over {LOAD_PER_CORE_WARNING} per CPU): other work "
            "shares the cores, so timings are noisier and ratios less certain than on an idle machine"
        )
    return load, None
