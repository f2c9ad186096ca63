"""Fixtures for web/test/schedulers.test.mjs, written by the numpy schedulers the Python runtime samples with.

Each case is a diffusers scheduler config, a step count and a short trajectory: the scaled model inputs and the
step outputs for given samples, model outputs and (for stochastic schedulers) noises. float32 values are written
as the exact doubles they are, so the JS side compares against numpy's own numbers.

    python tests/web/scheduler_fixtures.py web/test/fixtures/schedulers.json
"""

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from refine_control.runtime.schedulers import make_scheduler

SD = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
# (name, config, steps[, LCM first timestep as a model recommends it])
CASES: list[tuple[Any, ...]] = [
    ("ddim-sd-leading", {"_class_name": "DDIMScheduler", **SD, "steps_offset": 1, "set_alpha_to_one": False}, 7),
    (
        "ddim-linear-trailing-v",
        {
            "_class_name": "DDIMScheduler",
            "timestep_spacing": "trailing",
            "prediction_type": "v_prediction",
            "rescale_betas_zero_snr": True,
        },
        4,
    ),
    (
        "ddim-cosine-sample-clip",
        {
            "_class_name": "DDIMScheduler",
            "beta_schedule": "squaredcos_cap_v2",
            "prediction_type": "sample",
            "clip_sample": True,
            "timestep_spacing": "linspace",
        },
        3,
    ),
    ("lcm-sd", {"_class_name": "LCMScheduler", **SD, "original_inference_steps": 50}, 4),
    ("lcm-sd-1", {"_class_name": "LCMScheduler", **SD}, 1),
    ("lcm-linear-v", {"_class_name": "LCMScheduler", "prediction_type": "v_prediction"}, 6),
    ("lcm-linear-from-759", {"_class_name": "LCMScheduler"}, 2, 759),
    ("lcm-sd-from-500", {"_class_name": "LCMScheduler", **SD}, 3, 500),
    ("euler-sd", {"_class_name": "EulerDiscreteScheduler", **SD}, 5),
    (
        "euler-trailing-min",
        {
            "_class_name": "EulerDiscreteScheduler",
            **SD,
            "timestep_spacing": "trailing",
            "final_sigmas_type": "sigma_min",
        },
        3,
    ),
    (
        "euler-leading-v",
        {
            "_class_name": "EulerDiscreteScheduler",
            **SD,
            "timestep_spacing": "leading",
            "steps_offset": 1,
            "prediction_type": "v_prediction",
        },
        4,
    ),
    ("euler-ancestral-sd", {"_class_name": "EulerAncestralDiscreteScheduler", **SD}, 4),
]


def _floats(x: np.ndarray) -> list[float]:
    return [float(v) for v in np.asarray(x).ravel()]


def case(name: str, config: dict[str, Any], steps: int, first_timestep: int | None = None) -> dict[str, Any]:
    scheduler = make_scheduler(config)
    if first_timestep is None:
        scheduler.set_timesteps(steps)
    else:
        scheduler.set_timesteps(steps, first_timestep)
    rng = np.random.default_rng(0)
    shape = (1, 2, 3, 4)
    sample = rng.standard_normal(shape, dtype=np.float32) * np.float32(scheduler.init_noise_sigma)
    trajectory = []
    for i in range(len(scheduler.timesteps)):
        model_in = scheduler.scale_model_input(sample, i)
        out = rng.standard_normal(shape, dtype=np.float32)
        noise = rng.standard_normal(shape, dtype=np.float32)
        new = scheduler.step(out, i, sample, noise=noise)
        trajectory.append(
            {
                "sample": _floats(sample),
                "model_input": _floats(model_in),
                "model_output": _floats(out),
                "noise": _floats(noise),
                "prev": _floats(new),
            }
        )
        sample = new
    return {
        "name": name,
        "config": config,
        "steps": steps,
        "first_timestep": first_timestep,
        "key": type(scheduler).__name__,
        "alphas_cumprod": _floats(scheduler.alphas_cumprod),
        "timesteps": _floats(scheduler.timesteps),
        "sigmas": _floats(scheduler.sigmas) if hasattr(scheduler, "sigmas") else None,
        "init_noise_sigma": float(scheduler.init_noise_sigma),
        "stochastic": scheduler.stochastic,
        "trajectory": trajectory,
    }


def write_fixtures(path: Path, extra: list[tuple[Any, ...]] = ()) -> Path:
    """Write every case (and `extra` ones, e.g. an exported model's own scheduler.json) as JSON to `path`."""
    cases = [case(*spec) for spec in [*CASES, *extra]]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"cases": cases}))
    return path


if __name__ == "__main__":
    write_fixtures(Path(sys.argv[1]))
