"""What this CPU can do for INT8, read once (torch-free): the export decides `reduce_range` from it and records it
in the manifest; the runtime compares the serving CPU with that record.

Why it matters: ONNX Runtime's x86 INT8 kernels multiply uint8 activations by int8 weights. Without VNNI
(AVX-512 VNNI, AVX-VNNI or AMX-INT8) they use `vpmaddubsw`, whose 16-bit sums saturate unless the values are
quantised to 7 bits (`reduce_range=True`, see onnxruntime.quantization.quantize_static's docstring). With VNNI
the full 8 bits are safe and more accurate. ARM's kernels have no such limit.
"""

import platform
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
REDUCE_RANGE_CHOICES = ("auto", "on", "off")


@dataclass(frozen=True)
class CpuInfo:
    arch: str  # platform.machine(): x86_64, aarch64, arm64, ...
    model: str
    vnni: bool | None  # None when the flags could not be read (not Linux)

    @property
    def x86(self) -> bool:
        return self.arch.lower() in ("x86_64", "amd64", "i686", "x86")

    def to_json(self) -> dict[str, Any]:
        return {"arch": self.arch, "model": self.model, "vnni": self.vnni}


@lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    """This machine's CPU, from /proc/cpuinfo where there is one."""
    arch, model, flags = platform.machine() or "unknown", platform.processor() or "unknown", None
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Hardware") and model in ("unknown", arch, ""):
            model = value.strip()
        elif key in ("flags", "Features") and flags is None:
            flags = set(value.split())
    return CpuInfo(arch, model, None if flags is None else bool(flags & set(VNNI_FLAGS)))


def decide_reduce_range(choice: str, cpu: CpuInfo | None = None) -> tuple[bool, str]:
    """`reduce_range` for the INT8 export and the reason recorded with it."""
    if choice not in REDUCE_RANGE_CHOICES:
        raise ValueError(f"reduce_range choice must be one of {REDUCE_RANGE_CHOICES}, got {choice!r}")
    if choice != "auto":
        return choice == "on", f"--int8-reduce-range {choice}"
    cpu = cpu or cpu_info()
    if not cpu.x86:
        return False, f"auto: {cpu.arch} kernels do not saturate"
    if cpu.vnni is False:
        return True, "auto: this x86 CPU has no VNNI (7-bit activations avoid vpmaddubsw saturation)"
    if cpu.vnni is None:
        return True, "auto: could not read this CPU's flags; the safe setting"
    return False, "auto: this x86 CPU has VNNI"


def int8_cpu_warning(quantization: dict[str, Any], cpu: CpuInfo | None = None) -> str | None:
    """Why this CPU may run the recorded INT8 model badly, or None."""
    cpu = cpu or cpu_info()
    if quantization.get("reduce_range") is False and cpu.x86 and cpu.vnni is not True:
        exported_on = (quantization.get("cpu") or {}).get("model", "another CPU")
        return (
            f"the INT8 denoiser was quantised with reduce_range off (for {exported_on}, which has VNNI); this CPU "
            f"({cpu.model}) has no VNNI, so its INT8 products may saturate and the images degrade: re-export on "
            "this CPU or with `--int8-reduce-range on`, or serve the fp32 precision"
        )
    return None
