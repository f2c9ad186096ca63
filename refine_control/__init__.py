"""refine-control: distil a ControlNet teacher into a small student, export it and serve it on the device.

Importing any `refine_control.*` module first switches off the telemetry of the libraries it builds on, before
they can be imported: ONNX Runtime starts its native telemetry when `import onnxruntime` runs (DNS lookups of a
vendor events host, a device id under `~/.cache/Microsoft/`, `$TMPDIR/.ses`), and only `ORT_DISABLE_TELEMETRY=1`
in the environment at that moment stops it (`onnxruntime.disable_telemetry_events()` does not). A value the user
set already is kept. Every console script and `python -m` entry point of the package imports this module first.
"""

import os as _os
import sys as _sys

__version__ = "0.1.0"

NO_TELEMETRY_ENV = {
    "ORT_DISABLE_TELEMETRY": "1",  # ONNX Runtime's 1DS uploader, events and persistent device id
    "HF_HUB_DISABLE_TELEMETRY": "1",  # huggingface_hub (diffusers, transformers)
    "DISABLE_TELEMETRY": "1",  # older diffusers / transformers spelling
    "DO_NOT_TRACK": "1",  # the cross-tool convention (huggingface_hub honours it too)
    "OTEL_SDK_DISABLED": "true",  # any OpenTelemetry SDK a dependency might configure
}
_ORT_FIRST = "onnxruntime" in _sys.modules and "ORT_DISABLE_TELEMETRY" not in _os.environ
for _name, _value in NO_TELEMETRY_ENV.items():
    _os.environ.setdefault(_name, _value)
if _ORT_FIRST:  # too late for this process: say so instead of pretending
    import warnings as _warnings

    _warnings.warn(
        "onnxruntime was imported before refine_control without ORT_DISABLE_TELEMETRY=1: its telemetry is on in "
        "this process; import refine_control first or set the variable",
        RuntimeWarning,
        stacklevel=2,
    )
