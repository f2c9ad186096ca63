"""`refine-teacher`: train the built-in shapes teacher from a seed and save it as a diffusers pipeline."""

import argparse
import logging
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

from refine_control.cli_parser import add_output, add_verbosity, new_parser, verbosity
from refine_control.cli_utils import check_output, offline_env, run_cli, setup_logging

logger = logging.getLogger(__name__)

RECIPE_HELP = {
    "seed": "seed of the shapes, noise and initialisation",
    "batch_size": "images per optimizer step (every phase)",
    "pool_size": "distinct training shapes, rendered once and reused by every phase",
    "vae_steps": "optimizer steps of the VAE phase",
    "unet_steps": "optimizer steps of the UNet (text-to-image) phase",
    "controlnet_steps": "optimizer steps of the ControlNet phase",
    "vae_lr": "learning rate of the VAE phase",
    "unet_lr": "learning rate of the UNet phase",
    "controlnet_lr": "learning rate of the ControlNet phase",
    "warmup_steps": "linear warm-up of each phase",
    "caption_dropout": "probability of an empty caption (for classifier-free guidance)",
}


def build_parser() -> argparse.ArgumentParser:
    from refine_control.builtin.teacher_recipe import TeacherRecipe

    parser = new_parser(
        "refine-teacher",
        description="Train the built-in teacher (a small StableDiffusionControlNetPipeline: VAE, CLIP text encoder, "
        "UNet, ControlNet) on procedural shapes from a seed, and save it as fp16 safetensors.",
        epilog="Example: refine-teacher -o refine_control/builtin/teacher --seed 0 --evaluate 256",
    )
    add_output(
        parser, "where the pipeline is saved (replaced)", "--output-dir", dest="output_dir", type=Path, required=True
    )
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="keep each finished phase here and reuse it on a rerun"
    )
    parser.add_argument(
        "--evaluate", type=int, default=0, metavar="N",
        help="after training, measure the teacher on N held-out shapes and write MODEL_CARD.md (0: skip)",
    )  # fmt: skip
    defaults = TeacherRecipe()
    for field in fields(TeacherRecipe):
        value = getattr(defaults, field.name)
        parser.add_argument(
            f"--{field.name.replace('_', '-')}", type=type(value), default=value, help=RECIPE_HELP[field.name]
        )
    add_verbosity(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(verbosity(args))
    offline_env()

    def body() -> int:
        from refine_control.builtin.model_card import write_model_card
        from refine_control.builtin.teacher_recipe import TeacherRecipe, train_teacher

        recipe = TeacherRecipe(**{f.name: getattr(args, f.name) for f in fields(TeacherRecipe)})
        check_output(args.output_dir, args.work_dir and args.work_dir / "phase")  # before hours of training
        info = train_teacher(recipe, args.output_dir, args.work_dir)
        metrics = None
        if args.evaluate > 0:
            from refine_control.evaluation.evaluate import EvalConfig, evaluate

            metrics = evaluate(
                EvalConfig(target=str(args.output_dir), num_samples=args.evaluate, seed=recipe.seed)
            ).report
        write_model_card(args.output_dir, info, metrics)
        logger.info("teacher ready: %s (%.0f s)", args.output_dir, info["total"]["wall_s"])
        return 0

    return run_cli(body)
