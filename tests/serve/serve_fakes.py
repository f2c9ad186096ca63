"""A stand-in engine for routing, limit and queue tests, where the model itself does not matter."""

import threading
import time

import numpy as np

from refine_control.runtime.pipeline import CancelledError
from refine_control.serve.engine import GenerationParams, run_preprocessor


class FakeEngine:
    """Draws a deterministic gradient; each step sleeps `step_s`; `gate` (if given) blocks the first step."""

    def __init__(self, resolution: int = 64, size_multiple: int = 8, step_s: float = 0.0) -> None:
        self.resolution = resolution
        self.size_multiple = size_multiple
        self.default_preprocessor = "canny"
        self.default_steps, self.default_guidance_scale = 20, 3.0
        self.max_steps = 1000
        self.guidance_range: tuple[float, float] | None = None
        self.step_s = step_s
        self.gate: threading.Event | None = None
        self.started = threading.Event()
        self.calls = 0
        self.fail_next = False

    def model_card(self) -> dict:
        return {
            "name": "fake",
            "precision": "fp32",
            "available_precisions": ["fp32"],
            "model_format": "onnx",
            "scheduler": "ddim",
            "resolution": self.resolution,
            "size_multiple": self.size_multiple,
            "preprocessor": "canny",
            "recommended_steps": self.default_steps,
            "recommended_guidance_scale": self.default_guidance_scale,
        }

    def preprocess(self, image: np.ndarray, name: str, seed: int = 0) -> np.ndarray:
        return run_preprocessor(image, name, seed)

    def generate(self, params: GenerationParams, control, progress, cancel) -> np.ndarray:
        self.calls += 1
        self.started.set()
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("injected failure /secret/path")
        if self.gate is not None:
            self.gate.wait(30)
        for i in range(params.steps):
            if cancel.is_set():
                raise CancelledError("cancelled")
            time.sleep(self.step_s)
            progress(i + 1, params.steps)
        rng = np.random.default_rng(params.seed)
        return rng.integers(0, 256, (params.height, params.width, 3), dtype=np.uint8)
