"""The torch-free runtime: run a `refine-export` model dir with ONNX Runtime, numpy and pillow.

`OnnxControlNetPipeline` is the entry point (the server builds on it); `ModelDir` verifies a model dir against
its manifest; `schedulers` holds the numpy DDIM / Euler / Euler-ancestral / LCM schedulers.
Nothing here imports torch, diffusers or the `onnx` package.
"""

from refine_control.runtime.model_dir import ModelDir, ModelDirError
from refine_control.runtime.pipeline import CancelledError, CancelToken, OnnxControlNetPipeline
from refine_control.runtime.schedulers import SCHEDULERS, make_scheduler

__all__ = [
    "SCHEDULERS",
    "CancelToken",
    "CancelledError",
    "ModelDir",
    "ModelDirError",
    "OnnxControlNetPipeline",
    "make_scheduler",
]
