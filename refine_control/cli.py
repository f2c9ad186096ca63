"""`refine-distill`: distil a diffusers ControlNet teacher into a small student (Refine-Control recipe)."""

import argparse
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from refine_control.cli_parser import add_output, add_verbosity, new_parser, verbosity
from refine_control.cli_utils import offline_env, run_cli, setup_logging
from refine_control.models.presets import INIT_METHODS, STUDENT_PRESETS
from refine_control.preprocess import PREPROCESSORS
from refine_control.training.config import UNLABELLED_LOSSES, DistillConfig, read_run_config, with_run_settings
from refine_control.training.scale import SCALES, Scale

logger = logging.getLogger(__name__)
D = DistillConfig.__dataclass_fields__


def _default(name: str) -> object:
    return D[name].default


def _by_scale(what: str, pick: Callable[[Scale], object]) -> str:
    """`Default: ` followed by the value of each row of the scale table (training/scale.py)."""
    return f"Default: by teacher size (--scale): {what + ' ' if what else ''}" + ", ".join(
        f"{pick(s)} ({s.name})" for s in SCALES.values()
    )


def _pair(text: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two numbers MIN,MAX, got {text!r}") from None
    return low, high


def _weights(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three numbers task,out,feat, got {text!r}") from None
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected three numbers task,out,feat, got {text!r}")
    return values  # type: ignore[return-value]


def _optional_float(text: str) -> float | None:
    if text.strip().lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or `none`, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    presets = "\n".join(
        f"  {name:20s} {preset.description}" + (f"\n  {'':20s} use when: {preset.use_when}" if preset.use_when else "")
        for name, preset in ((n, STUDENT_PRESETS.get(n)) for n in STUDENT_PRESETS)
    )
    parser = new_parser(
        "refine-distill",
        description="Distil a ControlNet teacher (UNet + ControlNet, diffusers format) into a small student with the "
        "tri-level knowledge fusion loss (task, output, feature) and a semi-supervised second stage. The default "
        "recipe (--recipe fast) goes on, in the same run, to a few-step student that samples without guidance "
        "pairs (RUN/stages/few-step) and, where decoding dominates its image, a tiny VAE decoder; RUN/student is the "
        "last stage's student.",
        epilog=f"student presets (measured cost and quality: README, 'Student presets'):\n{presets}\n\n"
        "Example: refine-distill --teacher builtin -o runs/demo",
    )
    p = parser.add_argument
    p(
        "--teacher",
        default=_default("teacher"),
        help="`builtin` (the shipped shapes teacher), a StableDiffusionControlNetPipeline directory, an SD1.x "
        "single-file checkpoint (.safetensors; with --controlnet), or a hub id that is already in the local cache "
        "(never downloaded). Default: %(default)s",
    )
    p(
        "--controlnet",
        default=None,
        help="ControlNetModel directory or single checkpoint file (.safetensors), when --teacher is a base "
        "text-to-image pipeline or checkpoint",
    )
    p(
        "--teacher-config",
        default=None,
        metavar="DIR",
        help="configs of single-file checkpoints: a diffusers pipeline layout without weights (model_index.json, "
        "unet/ vae/ text_encoder/ controlnet/ configs, tokenizer/, scheduler/). Default: inferred from the "
        "checkpoint's keys when that hub repo is in the local cache (never downloaded)",
    )
    p(
        "--student",
        default=_default("student"),
        choices=STUDENT_PRESETS.names(),
        metavar="PRESET",
        help="student preset (see below). Default: %(default)s",
    )
    add_output(
        parser,
        "run directory to create (student/, checkpoints/, logs)",
        "--output-dir",
        dest="output_dir",
        required=True,
        type=Path,
        metavar="RUN",
    )
    p(
        "--recipe",
        default=_default("recipe"),
        choices=["fast", "guided"],
        help="fast: the compact student, then its few-step student (latent consistency distillation, guidance as an "
        "input), then a tiny decoder when it makes the image >= 2x cheaper in MACs, as stages of one run; guided: "
        "stop after the compact student (20 steps with guidance pairs). Default: %(default)s",
    )
    p(
        "--init",
        default=_default("init"),
        choices=INIT_METHODS,
        help="student initialisation: random; leading (teacher tensors of the same name, first channels); uniform "
        "(evenly spaced teacher channels, blocks paired by depth). Default: %(default)s",
    )
    p(
        "--labelled",
        default=None,
        metavar="DIR",
        help="image folder (metadata.jsonl with file_name and text); images without text count as unlabelled. "
        "Default with --teacher builtin: generated shapes",
    )
    p("--unlabelled", default=None, metavar="DIR", help="extra image folder of unlabelled images for stage 2")
    data = parser.add_argument_group(
        "data (Hugging Face datasets, local files only)",
        "--labelled / --unlabelled take an image folder (metadata.jsonl convention), parquet shards or webdataset "
        "tar shards (a file or a folder of them). Rows with a caption are labelled, rows without are unlabelled.",
    )
    data.add_argument(
        "--streaming",
        action="store_true",
        help="read the data as a stream, shard by shard (for data larger than memory or disk cache); each process "
        "reads its own shards and --resume continues at the exact sample",
    )
    data.add_argument(
        "--caption-column", default=None, metavar="NAME", help="caption column. Default: text, txt or caption"
    )
    data.add_argument(
        "--image-column", default=None, metavar="NAME", help="image column. Default: image, jpg, jpeg, png or webp"
    )
    data.add_argument(
        "--num-workers",
        type=int,
        default=_default("num_workers"),
        help="data worker processes (decode, resize, preprocessor); the data order does not depend on it. "
        "Default: %(default)s",
    )
    data.add_argument(
        "--shuffle-buffer",
        type=int,
        default=_default("shuffle_buffer"),
        help="with --streaming: rows shuffled in a buffer (shard order is always shuffled). Default: %(default)s",
    )
    data.add_argument(
        "--validate",
        default=_default("validate"),
        choices=["auto", "upfront", "lazy"],
        help="upfront: decode every image before training (a bad file stops the run by name); lazy: skip, count "
        "and name undecodable images in logs/bad_files.txt; auto: upfront for at most 10,000 images (not "
        "streaming), else lazy. Default: %(default)s",
    )
    data.add_argument(
        "--max-bad-fraction",
        type=float,
        default=_default("max_bad_fraction"),
        help="lazy validation stops the run when more than this fraction of samples cannot be decoded. "
        "Default: %(default)s",
    )
    p(
        "--builtin-labelled",
        type=int,
        default=_default("builtin_labelled"),
        metavar="N",
        help="labelled shapes to generate for the builtin teacher. Default: %(default)s",
    )
    p(
        "--builtin-unlabelled",
        type=int,
        default=_default("builtin_unlabelled"),
        metavar="N",
        help="unlabelled shapes to generate for the builtin teacher. Default: %(default)s",
    )
    p(
        "--preprocessor",
        default=_default("preprocessor"),
        metavar="NAME",
        help=f"control-image preprocessor: {', '.join(PREPROCESSORS.names())}, or aux:<detector> with controlnet-aux. "
        "Default: %(default)s",
    )
    p("--resolution", type=int, default=None, help="training image size. Default: the teacher's native size")
    p(
        "--scale",
        default="auto",
        choices=["auto", *SCALES],
        help="the row of default steps, learning rates and batch size (docs/distill.md): "
        + "; ".join(f"{s.name}: {s.description}" for s in SCALES.values())
        + "; auto picks the row nearest the teacher's UNet parameter count (a resumed run keeps its own). "
        "Explicit flags win over the row. Default: %(default)s",
    )
    p(
        "--dry-run",
        action="store_true",
        help="print the resolved recipe (stages, steps, learning rate, batch, resolution), the parameter and MAC "
        "counts of teacher and student, a memory estimate and a lower bound on the time per step; read only the "
        "configs, train and write nothing",
    )
    p(
        "--ignore-memory-estimate",
        action="store_true",
        help="start even when the memory estimate (see --dry-run) exceeds this machine's memory",
    )
    p(
        "--max-steps",
        type=int,
        default=None,
        help="stage-1 optimizer steps (or the few-step / tiny-decoder stage's with --from). "
        + _by_scale("stage 1", lambda s: s.objectives["distill"][0]),
    )
    p(
        "--stage2-steps",
        type=int,
        default=None,
        help="stage-2 (semi-supervised) steps; 0 skips it. Default: half of --max-steps when unlabelled images exist",
    )
    p(
        "--loss-weights",
        type=_weights,
        default=_default("loss_weights"),
        metavar="TASK,OUT,FEAT",
        help="weights of the task, output and feature terms; e.g. 1,0,0 trains from scratch. Default: 1,1,1",
    )
    p(
        "--no-normalize-features",
        dest="normalize_features",
        action="store_false",
        help="do not divide each feature tap's error by the teacher feature's mean square",
    )
    p(
        "--snr-gamma",
        type=_optional_float,
        default=_default("snr_gamma"),
        metavar="GAMMA",
        help="min-SNR-γ timestep weights of the task and output terms (arXiv 2303.09556); `none` weighs every "
        "timestep equally. Default: %(default)s",
    )
    p("--batch-size", type=int, default=None, help="per-process batch size. " + _by_scale("", lambda s: s.batch_size))
    p(
        "--grad-accum",
        type=int,
        default=_default("grad_accum"),
        help="gradient accumulation steps. Default: %(default)s",
    )
    p(
        "--learning-rate",
        type=float,
        default=None,
        help="AdamW learning rate (of stage 1, or of the few-step / tiny-decoder stage with --from). "
        + _by_scale("stage 1", lambda s: f"{s.objectives['distill'][1]:g}"),
    )
    p(
        "--stage2-lr-scale",
        type=float,
        default=_default("stage2_lr_scale"),
        help="stage-2 learning rate as a multiple of stage 1's. Default: %(default)s",
    )
    p(
        "--warmup-steps",
        type=int,
        default=_default("warmup_steps"),
        help="linear warm-up per stage. Default: %(default)s",
    )
    p(
        "--lr-schedule",
        default=_default("lr_schedule"),
        choices=["constant", "cosine"],
        help="after the warm-up: constant, or a cosine decay to zero over each stage. Default: %(default)s",
    )
    p("--weight-decay", type=float, default=_default("weight_decay"), help="AdamW weight decay. Default: %(default)s")
    p("--max-grad-norm", type=float, default=_default("max_grad_norm"), help="gradient clipping. Default: %(default)s")
    p(
        "--mixed-precision",
        default=_default("mixed_precision"),
        choices=["no", "bf16", "fp16"],
        help="accelerate mixed precision (fp16 needs a GPU). Default: %(default)s",
    )
    p(
        "--prompt-dropout",
        type=float,
        default=_default("prompt_dropout"),
        help="probability of an empty caption, for classifier-free guidance. Default: %(default)s",
    )
    p(
        "--replay-ratio",
        type=float,
        default=_default("replay_ratio"),
        help="share of labelled samples replayed in each stage-2 batch (1: stage 2's schedule on labelled samples "
        "only, a control for what the unlabelled images add). Default: %(default)s",
    )
    p(
        "--unlabelled-loss",
        choices=UNLABELLED_LOSSES,
        default=_default("unlabelled_loss"),
        help="the loss on stage 2's unlabelled samples: tri-level (the teacher's outputs and features as targets) or "
        "task (the denoising loss on the image alone, a control for what the teacher's targets add; labelled replay "
        "keeps the tri-level loss). Default: %(default)s",
    )
    p(
        "--ema-decay",
        type=float,
        default=None,
        help="save an EMA of the student (diffusers' EMAModel: decay min(this, (1+t)/(10+t)) at step t), e.g. 0.999",
    )
    few = parser.add_argument_group(
        "few-step stage and tiny decoder (stages of the fast recipe, or alone with --from RUN, whose teacher, preset, "
        "preprocessor and resolution are reused)",
        "--few-step: latent consistency distillation of the run's student with the guidance scale as an input, so "
        "that it samples in a few steps without the classifier-free guidance pair (UNet and ControlNet trained "
        "together). --tiny-decoder: a tiny VAE (TAESD-like) distilled from the teacher's, for the run's student.",
    )
    few.add_argument(
        "--few-step-steps",
        type=int,
        default=None,
        help="steps of the fast recipe's few-step stage (its learning rate: the scale's, "
        + ", ".join(f"{s.objectives['few_step'][1]:g} ({s.name})" for s in SCALES.values())
        + "). "
        + _by_scale("", lambda s: s.objectives["few_step"][0]),
    )
    few.add_argument(
        "--tiny-decoder-stage",
        default=_default("tiny_decoder_stage"),
        choices=["auto", "always", "never"],
        help="the fast recipe's tiny-decoder stage: auto adds it when it makes the few-step image >= 2x cheaper in "
        "MACs (recorded in RUN/recipe.json). Default: %(default)s",
    )
    few.add_argument(
        "--from",
        dest="from_run",
        metavar="RUN",
        default=None,
        help="a finished refine-distill run (its student is the starting point)",
    )
    few.add_argument("--few-step", action="store_true", help="train the few-step student (needs --from)")
    few.add_argument("--tiny-decoder", action="store_true", help="distil a tiny VAE for the run's student")
    few.add_argument(
        "--tiny-decoder-from",
        metavar="DIR",
        default=None,
        help="use a pretrained diffusers AutoencoderTiny dir (e.g. TAESD for SD1.x) as the run's student's decoder "
        "instead of distilling one (needs --from; its own latent scaling factor is kept)",
    )
    few.add_argument(
        "--tiny-decoder-width",
        type=int,
        default=_default("tiny_decoder_width"),
        help="channels of the tiny VAE. Default: %(default)s",
    )
    few.add_argument(
        "--guidance-range",
        type=_pair,
        default=_default("guidance_range"),
        metavar="MIN,MAX",
        help="guidance scales the student learns to take as input. Default: 2,5",
    )
    few.add_argument(
        "--solver-steps",
        type=int,
        default=_default("solver_steps"),
        help="the teacher's DDIM grid. Default: %(default)s",
    )
    few.add_argument(
        "--target-decay",
        type=float,
        default=_default("target_decay"),
        help="constant EMA decay of the target network. Default: %(default)s",
    )
    few.add_argument(
        "--sampling-steps",
        type=int,
        default=None,
        help="steps recommended to samplers (student/sampling.json, the export manifest, refine-eval, refine-serve). "
        "Default: 2 for a few-step student (from its first timestep, see --sampling-first-timestep), 20 for a "
        "guided one",
    )
    few.add_argument(
        "--sampling-guidance",
        type=float,
        default=_default("sampling_guidance"),
        help="guidance scale recommended to samplers. Default: %(default)s",
    )
    few.add_argument(
        "--sampling-first-timestep",
        type=int,
        default=None,
        metavar="T",
        help="the timestep a few-step student's sampling starts from (its steps spaced over the LCM grid at or "
        "below T). Default: the highest grid timestep whose signal √ᾱ is >= 0.05 on the teacher's noise schedule "
        "(759 on the built-in teacher, 999 on SD1.5's)",
    )
    p("--checkpoint-every", type=int, default=_default("checkpoint_every"), help="optimizer steps between checkpoints")
    p("--keep-checkpoints", type=int, default=_default("keep_checkpoints"), help="newest checkpoints kept on disk")
    p("--log-every", type=int, default=_default("log_every"), help="steps between metrics.jsonl rows")
    p("--seed", type=int, default=_default("seed"), help="seed for data order, noise and init. Default: %(default)s")
    p("--resume", action="store_true", help="continue an unfinished run from its newest checkpoint")
    p("--overwrite", action="store_true", help="replace an existing run in --output")
    p(
        "--allow-pickle-weights",
        action="store_true",
        help="load teacher weights from pickle files (.bin, .pt, ...) when a component has no safetensors file; "
        "unpickling can run code, so only for files you trust. Default: safetensors only",
    )
    add_verbosity(parser)
    return parser


def resolve_scale(args: argparse.Namespace) -> tuple[str, str]:
    """The scale row for this run and why: `--scale`, a resumed run's own, or the teacher's UNet size."""
    if args.scale != "auto":
        return args.scale, "--scale"
    saved = Path(args.output_dir) / "config.json"
    if args.resume and saved.is_file():
        try:
            return str(json.loads(saved.read_text("utf-8")).get("scale", "builtin")), f"the run's {saved}"
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            pass  # reported by the run dir checks
    teacher, controlnet, config = args.teacher, args.controlnet, args.teacher_config
    if args.from_run is not None:
        saved_run = read_run_config(Path(args.from_run), f"`--from {args.from_run}`:")
        teacher, controlnet = saved_run["teacher"], saved_run.get("controlnet")
        config = saved_run.get("teacher_config")
    from refine_control.training.estimate import meta_teacher
    from refine_control.training.scale import pick_scale

    meta = meta_teacher(teacher, controlnet, config, args.allow_pickle_weights)
    params = sum(p.numel() for p in meta.unet.parameters())
    return pick_scale(params).name, f"the teacher's UNet has {params / 1e6:.1f} M parameters"


def config_from_args(args: argparse.Namespace) -> DistillConfig:
    values = {k: v for k, v in vars(args).items() if k in D}
    if values.get("scale", "auto") == "auto":
        values["scale"] = resolve_scale(args)[0]
    return with_run_settings(DistillConfig(**values))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(verbosity(args))
    offline_env()

    def body() -> int:
        from refine_control.training.plan import check_memory, print_plan

        scale, why = resolve_scale(args)
        cfg = config_from_args(argparse.Namespace(**{**vars(args), "scale": scale}))
        if cfg.tiny_decoder_from is not None:  # checked before the run dir exists: a bad decoder dir writes nothing
            from refine_control.models.tiny_decoder_dir import load_tiny_decoder, vae_config_of

            load_tiny_decoder(cfg.tiny_decoder_from, vae_config_of(Path(str(cfg.from_run)) / "student"))
        if args.dry_run:
            print_plan(cfg, why)
            return 0
        if not args.ignore_memory_estimate:
            check_memory(cfg)
        from refine_control.models.teacher import pickle_weights_allowed
        from refine_control.training.trainer import train

        with pickle_weights_allowed(cfg.allow_pickle_weights):
            run = train(cfg)
        if os.environ.get("RANK", "0") == "0":  # one message, also under `accelerate launch` / torchrun
            logger.info("done: student saved to %s/student", run)
            logger.info("next: refine-eval %s  |  refine-export %s -o %s/model --int8", run, run, run)
        return 0

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(main())
