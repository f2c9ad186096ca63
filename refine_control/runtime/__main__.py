"""`python -m refine_control.runtime MODEL --prompt TEXT --control IMAGE --output OUT.png`

Generate one image from an exported model dir without torch (a smoke test of an export on the target device).
Errors (missing, corrupted or unsafe model files, bad arguments) are one line on stderr with exit code 2.
"""

import argparse
import io
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from refine_control.cli_parser import add_output, add_verbosity, new_parser, verbosity
from refine_control.cli_utils import run_cli, setup_logging

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("python -m refine_control.runtime", description=__doc__)
    parser.add_argument("model_dir", metavar="MODEL", type=Path, help="a refine-export model dir")
    parser.add_argument("--prompt", default="", help="the text prompt. Default: empty")
    parser.add_argument("--negative-prompt", default="", help="the negative prompt. Default: empty")
    parser.add_argument("--control", type=Path, required=True, help="control image (PNG/JPEG)")
    parser.add_argument(
        "--preprocess", action="store_true", help="apply the model's preprocessor (e.g. Canny) to --control first"
    )
    add_output(parser, "PNG file to write", type=Path, required=True, metavar="PNG")
    parser.add_argument(
        "--precision",
        default="auto",
        help="auto (the fastest that passed parity), fp32, int8 or fp16 (those exported)",
    )
    parser.add_argument(
        "--model-format",
        "--format",
        default="onnx",
        choices=("onnx", "ort"),
        help="graph format (ort: the mobile one)",
    )
    parser.add_argument("--scheduler", default=None, help="ddim, euler, euler_ancestral or lcm. Default: the model's")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps. Default: the model's recommendation")
    parser.add_argument(
        "--guidance-scale",
        type=float,
        default=None,
        help="guidance scale (within the model's trained range). Default: the model's recommendation",
    )
    parser.add_argument("--controlnet-scale", type=float, default=1.0, help="strength of the control")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial noise")
    parser.add_argument("--width", type=int, default=None, help="image width. Default: the model's")
    parser.add_argument("--height", type=int, default=None, help="image height. Default: the model's")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads. Default: all CPUs")
    add_verbosity(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(verbosity(args))

    def body() -> int:
        import numpy as np
        from PIL import Image, UnidentifiedImageError

        from refine_control.atomic import write_bytes
        from refine_control.errors import ConfigError
        from refine_control.runtime.pipeline import OnnxControlNetPipeline

        pipe = OnnxControlNetPipeline(
            args.model_dir,
            args.precision,
            scheduler=args.scheduler,
            model_format=args.model_format,
            num_threads=args.threads,
        )
        try:
            with Image.open(args.control) as im:
                control = np.asarray(im.convert("RGB"))
        except (OSError, UnidentifiedImageError) as err:
            raise ConfigError(f"cannot read the control image {args.control}: {err}") from err
        if args.preprocess:
            from refine_control.preprocess import get_preprocessor

            name = pipe.model.pipeline.get("preprocessor") or "canny"
            control = get_preprocessor(str(name))(control)
        image = pipe(
            args.prompt,
            control,
            args.negative_prompt,
            steps=args.steps,
            guidance_scale=args.guidance_scale,
            controlnet_scale=args.controlnet_scale,
            seed=args.seed,
            width=args.width,
            height=args.height,
        )
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        write_bytes(args.output, buffer.getvalue())
        logger.info("wrote %s (%dx%d)", args.output, image.shape[1], image.shape[0])
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
