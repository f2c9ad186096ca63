"""`refine-export RUN -o MODEL`: ONNX (+ INT8 / FP16 / ORT format) export with a parity report.

argparse and `ExportConfig` only; the work is `refine_control.export.exporter.export_model`, imported when the
command runs, so `refine-export --help` loads neither torch nor onnx.
"""

import argparse
import dataclasses
import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refine_control.cli_parser import add_output, add_verbosity, new_parser, verbosity
from refine_control.cli_utils import offline_env, run_cli, setup_logging
from refine_control.errors import ConfigError
from refine_control.export.spec import DEFAULT_OPSET, EXPORTERS, INT8_CALIBRATIONS, INT8_OP_TYPES
from refine_control.runtime.cpu import REDUCE_RANGE_CHOICES

logger = logging.getLogger(__name__)

_NOT_CONFIG = ("verbose", "quiet")
_WEB_BESIDE = "<beside the model dir>"


@dataclass(frozen=True)
class ExportConfig:
    run: Path
    output_dir: Path
    int8: bool = False
    fp16: bool = False
    ort: bool = False
    calibration_samples: int = 8
    parity_samples: int = 4
    steps: int | None = None  # None: the student's recommendation (student/sampling.json)
    guidance_scale: float | None = None  # None: likewise
    int8_op_types: tuple[str, ...] | None = None  # None: choose the nodes per node (measured here)
    int8_calibration: str = "percentile"
    int8_reduce_range: str = "auto"  # auto: from this CPU (refine_control/runtime/cpu.py)
    int8_anyway: bool = False
    exporter: str = "dynamo"
    opset: int = DEFAULT_OPSET
    data: Path | None = None
    threads: int | None = None
    overwrite: bool = False
    allow_degraded: bool = False
    web: Path | None = None  # the static browser folder to write (export/web.py), or None
    vae_decoder: Path | None = None  # a pretrained AutoencoderTiny dir exported instead of the student's decoder

    def __post_init__(self) -> None:
        checks = [
            (self.calibration_samples >= 1, "--calibration-samples", self.calibration_samples, ">= 1"),
            (self.parity_samples >= 1, "--parity-samples", self.parity_samples, ">= 1"),
            (self.steps is None or 1 <= self.steps <= 50, "--steps", self.steps, "in 1..50"),
            (
                self.guidance_scale is None or (math.isfinite(self.guidance_scale) and self.guidance_scale >= 0),
                "--guidance-scale",
                self.guidance_scale,
                "a finite number >= 0",
            ),
            (
                self.int8_calibration in INT8_CALIBRATIONS,
                "--int8-calibration",
                self.int8_calibration,
                "one of " + ", ".join(INT8_CALIBRATIONS),
            ),
            (
                self.int8_reduce_range in REDUCE_RANGE_CHOICES,
                "--int8-reduce-range",
                self.int8_reduce_range,
                "one of " + ", ".join(REDUCE_RANGE_CHOICES),
            ),
            (self.exporter in EXPORTERS, "--exporter", self.exporter, " or ".join(EXPORTERS)),
            (17 <= self.opset <= 21, "--opset", self.opset, "in 17..21"),
            (self.exporter != "dynamo" or self.opset >= 18, "--opset", self.opset, ">= 18 with the dynamo exporter"),
            (self.threads is None or self.threads >= 1, "--threads", self.threads, ">= 1"),
            (
                self.int8_op_types is None
                or (bool(self.int8_op_types) and set(self.int8_op_types) <= set(INT8_OP_TYPES)),
                "--int8-op-types",
                self.int8_op_types,
                f"'auto' or a comma list of {', '.join(INT8_OP_TYPES)}",
            ),
        ]
        for ok, flag, value, allowed in checks:
            if not ok:
                raise ConfigError(f"`{flag}` must be {allowed}, got {value}")
        if self.run.resolve() == self.output_dir.resolve():
            raise ConfigError("`--output` must not be the run dir itself")
        if self.web is not None and self.web.resolve() in (self.run.resolve(), self.output_dir.resolve()):
            raise ConfigError("`--web` must name a folder other than the run dir and the model dir")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "ExportConfig":
        values: dict[str, Any] = {k: v for k, v in vars(args).items() if k not in _NOT_CONFIG}
        op_types = values.pop("int8_op_types")
        values["int8_op_types"] = (
            None if op_types in (None, "auto") else tuple(t.strip() for t in op_types.split(",") if t.strip())
        )
        if values.get("web") == Path(_WEB_BESIDE):  # `--web` without a path (argparse applies `type` to const)
            values["web"] = values["output_dir"].with_name(values["output_dir"].name + "-web")
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for key in ("run", "output_dir", "data", "web", "vae_decoder"):
            out[key] = None if out[key] is None else str(out[key])
        out["int8_op_types"] = None if self.int8_op_types is None else list(self.int8_op_types)
        return out


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser(
        "refine-export",
        description="Export a distilled student (a refine-distill run dir) to ONNX, with INT8 / FP16 / ORT-format "
        "variants, and prove parity with the PyTorch student (parity.json).",
    )
    parser.add_argument("run", metavar="RUN", type=Path, help="a finished refine-distill run dir (holds student/)")
    add_output(
        parser, "the model dir to write", "--output-dir", dest="output_dir", type=Path, required=True, metavar="MODEL"
    )
    parser.add_argument("--int8", action="store_true", help="also write denoiser.int8.onnx (static QDQ)")
    parser.add_argument("--fp16", action="store_true", help="also write denoiser.fp16.onnx (size; slower on CPU)")
    parser.add_argument("--ort", action="store_true", help="also write every graph in ORT format (mobile runtimes)")
    parser.add_argument(
        "--calibration-samples", type=int, default=8, help="pipeline runs on the run's data for INT8 calibration"
    )
    parser.add_argument("--parity-samples", type=int, default=4, help="prompt/control/seed triples for parity")
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="denoising steps of calibration and parity runs. Default: the student's recommendation "
        "(student/sampling.json: e.g. 4 for a few-step student, 20 for a guided one)",
    )
    parser.add_argument(
        "--guidance-scale",
        type=float,
        default=None,
        help="guidance scale of calibration and parity runs. Default: the student's recommendation",
    )
    parser.add_argument(
        "--int8-op-types",
        default="auto",
        help="'auto': choose which nodes to quantise by measuring, on this CPU, their speed and the error each adds, "
        "and keep the fastest set whose images stay within 95%% of FP32's edge F1 and 35 dB of its images; "
        f"or a list of {','.join(INT8_OP_TYPES)} to quantise every node of those types (no selection)",
    )
    parser.add_argument(
        "--int8-calibration",
        choices=INT8_CALIBRATIONS,
        default="percentile",
        help="activation ranges from the captured inputs: percentile (99.999), minmax or entropy",
    )
    parser.add_argument(
        "--int8-reduce-range",
        choices=REDUCE_RANGE_CHOICES,
        default="auto",
        help="7-bit activations for x86 CPUs without VNNI. auto: decided from this CPU; recorded in the manifest, "
        "and the runtime warns on a CPU that needs a different setting",
    )
    parser.add_argument(
        "--int8-anyway",
        action="store_true",
        help="write an INT8 file even when no node set is both faster and accurate (the fastest accurate set, else "
        "the smallest)",
    )
    parser.add_argument(
        "--web",
        nargs="?",
        type=Path,
        const=_WEB_BESIDE,
        default=None,
        metavar="DIR",
        help="also write a static folder that runs the model in a browser, with no server; needs "
        "`npm ci --prefix web`. Default DIR: the model dir's name + '-web'",
    )
    parser.add_argument(
        "--vae-decoder",
        type=Path,
        default=None,
        metavar="DIR",
        help="export this pretrained diffusers AutoencoderTiny dir (e.g. TAESD for SD1.x) as vae_decoder.onnx in "
        "place of the student's decoder; its own latent scaling factor goes into the manifest",
    )
    parser.add_argument("--exporter", choices=EXPORTERS, default="dynamo", help="torch.onnx exporter")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset. Default: %(default)s")
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="captioned image folder for calibration and parity. Default: the run's own",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads for ONNX Runtime and PyTorch. Default: all CPUs"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing model dir (only on success)")
    parser.add_argument(
        "--allow-degraded", action="store_true", help="keep the export even when parity thresholds are missed"
    )
    add_verbosity(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(verbosity(args))
    offline_env()

    def body() -> int:
        cfg = ExportConfig.from_args(args)  # validate before the heavy imports
        if cfg.vae_decoder is not None:
            from refine_control.models.tiny_decoder_dir import read_tiny_decoder_config

            read_tiny_decoder_config(cfg.vae_decoder)
        if cfg.web is not None:  # fail before the export when the browser folder cannot be written
            from refine_control.export.web import check_web_source, check_web_target

            check_web_source()
            check_web_target(cfg.web, cfg.overwrite)
        from refine_control.export.exporter import export_model
        from refine_control.export.parity import format_summary

        result = export_model(cfg, verbose=args.verbose)
        sys.stdout.write(format_summary(result.parity) + "\n")
        sys.stdout.write(f"model dir: {result.output_dir}\n")
        if cfg.web is not None:
            from refine_control.export.web import write_web_folder

            write_web_folder(result.output_dir, cfg.web, overwrite=cfg.overwrite, threads=cfg.threads)
            sys.stdout.write(
                f"web folder: {cfg.web} (serve it with the COOP/COEP headers of its README.txt, open index.html; "
                "index.html?selftest=1 checks it against the Python runtime)\n"
            )
        return 0

    return run_cli(body)
