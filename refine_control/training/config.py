"""`DistillConfig`: every option of `refine-distill`, validated once, saved with the run."""

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refine_control.errors import ConfigError
from refine_control.models.presets import INIT_METHODS, STUDENT_PRESETS
from refine_control.preprocess import get_preprocessor
from refine_control.runtime.sampling import GUIDED_DEFAULT, SamplingRecommendation
from refine_control.training.scale import DEFAULT_SCALE, SCALES

# Options that may differ between a run and its `--resume` without changing what is computed.
RESUME_FREE_FIELDS = (
    "resume",
    "overwrite",
    "checkpoint_every",
    "keep_checkpoints",
    "log_every",
    "allow_pickle_weights",
    "num_workers",  # the data order never depends on the number of data workers
    "max_bad_fraction",
    "validate",
)


RECIPES = ("fast", "guided")
TINY_DECODER_STAGES = ("auto", "always", "never")
UNLABELLED_LOSSES = ("tri-level", "task")
# A few-step student's recommended steps unless --sampling-steps says otherwise: the fewest whose validation scores
# kept the targets (docs/method.md, "Few-step stage").
FEW_STEP_SAMPLING_STEPS = 2

# (steps, learning rate) by objective at the built-in teacher's size: stage 1, the few-step stage, the tiny decoder.
# Other teacher sizes: refine_control/training/scale.py.
OBJECTIVE_DEFAULTS = SCALES[DEFAULT_SCALE].objectives


@dataclass(frozen=True)
class DistillConfig:
    output_dir: Path
    # fast: compact student → few-step student → tiny decoder when it pays (refine_control/training/recipe.py);
    # guided: stop after the compact student (sampled with guidance pairs).
    recipe: str = "fast"
    teacher: str = "builtin"
    controlnet: str | None = None
    teacher_config: str | None = None  # config dir of single-file checkpoints (models/single_file.py)
    student: str = "compact-wide"
    init: str = "uniform"
    labelled: str | None = None
    unlabelled: str | None = None
    # The data layer (Hugging Face `datasets`): image folders, parquet or webdataset shards; see training_data.py.
    streaming: bool = False
    caption_column: str | None = None  # None: text, txt or caption, whichever exists
    image_column: str | None = None  # None: image, jpg, jpeg, png or webp, whichever exists
    num_workers: int = 0
    shuffle_buffer: int = 1000  # streaming: rows shuffled in a buffer (the shard order is always shuffled)
    validate: str = "auto"  # upfront | lazy | auto (upfront for map-style data of at most 10,000 rows)
    max_bad_fraction: float = 0.001
    builtin_labelled: int = 500
    builtin_unlabelled: int = 0  # > 0 adds stage 2 on that many unlabelled shapes
    preprocessor: str = "canny"
    resolution: int | None = None  # None: the teacher's native size
    # The defaults by teacher size (training/scale.py) fill max_steps, learning_rate and batch_size when None;
    # `refine-distill` picks the row from the teacher's UNet size (--scale auto).
    scale: str = DEFAULT_SCALE
    max_steps: int | None = None  # None: the scale's, e.g. 1600 (builtin), or 600 for a few-step stage
    stage2_steps: int | None = None  # None: max_steps // 2 when unlabelled images exist, else 0
    loss_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
    normalize_features: bool = True
    snr_gamma: float | None = 5.0  # min-SNR-γ timestep weights of the task and output terms; None: equal weights
    batch_size: int | None = None  # None: the scale's (16 builtin, 4 sd15)
    grad_accum: int = 1
    learning_rate: float | None = None  # None: the scale's, e.g. 2e-3 (builtin), or 2e-4 for a few-step stage
    stage2_lr_scale: float = 0.5
    warmup_steps: int = 50
    lr_schedule: str = "cosine"
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"
    prompt_dropout: float = 0.1
    replay_ratio: float = 0.5
    # The loss on stage 2's unlabelled samples: "tri-level" (the recipe: the teacher's outputs and features are their
    # targets) or "task" (the denoising loss on the image alone; the control that attributes stage 2's gain).
    unlabelled_loss: str = "tri-level"
    ema_decay: float | None = None
    # The few-step stage: latent consistency distillation of a finished run's student (`from_run`).
    from_run: str | None = None
    few_step: bool = False
    tiny_decoder: bool = False  # distil a tiny VAE (AutoencoderTiny) from the teacher's for the run's student
    tiny_decoder_width: int = 32
    tiny_decoder_from: str | None = None  # a pretrained AutoencoderTiny dir (e.g. TAESD) instead of distilling one
    few_step_steps: int | None = None  # the fast recipe's few-step stage; None: its objective's default (600)
    tiny_decoder_stage: str = "auto"  # the fast recipe's tiny decoder: auto (the MAC rule), always or never
    guidance_range: tuple[float, float] = (2.0, 5.0)  # guidance scales the student learns to take as input
    solver_steps: int = 50  # the teacher's DDIM grid; each target is one step on it
    target_decay: float = 0.95  # EMA decay of the target network
    sampling_steps: int | None = None  # recommended to samplers (student/sampling.json); None: 2 few-step, else 20
    sampling_guidance: float = 3.0
    # A few-step student's recommended LCM start (sampling.json `first_timestep`); None: `lcm_start_timestep`'s
    # pick for the teacher's noise schedule.
    sampling_first_timestep: int | None = None
    checkpoint_every: int = 250
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 0
    resume: bool = False
    overwrite: bool = False
    allow_pickle_weights: bool = False  # teacher weights as pickle files (.bin, ...) when no safetensors exist

    def __post_init__(self) -> None:
        if self.tiny_decoder_from is not None:  # a pretrained tiny decoder is the tiny-decoder stage, untrained
            object.__setattr__(self, "tiny_decoder", True)
        # Defaults that depend on the teacher's size and the objective (frozen dataclass: set once, here).
        if self.scale not in SCALES:
            raise ConfigError(f"`--scale` must be one of {', '.join(SCALES)}, got {self.scale}")
        row = SCALES[self.scale]
        steps, rate = row.objectives[self.objective]
        if self.max_steps is None:
            object.__setattr__(self, "max_steps", steps)
        if self.learning_rate is None:
            object.__setattr__(self, "learning_rate", rate)
        if self.batch_size is None:
            object.__setattr__(self, "batch_size", row.batch_size)
        if self.resolution is None and row.resolution is not None:
            object.__setattr__(self, "resolution", row.resolution)
        STUDENT_PRESETS.get(self.student)  # raises with the list of presets
        if not self.preprocessor.startswith("aux:"):  # aux: detectors are checked when first used
            get_preprocessor(self.preprocessor)
        checks = [
            (self.init in INIT_METHODS, "--init", self.init, ", ".join(INIT_METHODS)),
            (self.max_steps >= 0, "--max-steps", self.max_steps, ">= 0"),
            (self.stage2_steps is None or self.stage2_steps >= 0, "--stage2-steps", self.stage2_steps, ">= 0"),
            (len(self.loss_weights) == 3, "--loss-weights", self.loss_weights, "three numbers task,out,feat"),
            (all(w >= 0 for w in self.loss_weights), "--loss-weights", self.loss_weights, "non-negative weights"),
            (any(w > 0 for w in self.loss_weights), "--loss-weights", self.loss_weights, "at least one weight > 0"),
            (self.snr_gamma is None or self.snr_gamma > 0, "--snr-gamma", self.snr_gamma, "> 0 (or `none`)"),
            (self.batch_size >= 1, "--batch-size", self.batch_size, ">= 1"),
            (self.grad_accum >= 1, "--grad-accum", self.grad_accum, ">= 1"),
            (self.learning_rate > 0, "--learning-rate", self.learning_rate, "> 0"),
            (self.stage2_lr_scale > 0, "--stage2-lr-scale", self.stage2_lr_scale, "> 0"),
            (self.warmup_steps >= 0, "--warmup-steps", self.warmup_steps, ">= 0"),
            (self.lr_schedule in ("constant", "cosine"), "--lr-schedule", self.lr_schedule, "constant or cosine"),
            (self.max_grad_norm > 0, "--max-grad-norm", self.max_grad_norm, "> 0"),
            (
                self.mixed_precision in ("no", "bf16", "fp16"),
                "--mixed-precision",
                self.mixed_precision,
                "no, bf16, fp16",
            ),
            (0 <= self.prompt_dropout <= 1, "--prompt-dropout", self.prompt_dropout, "in [0, 1]"),
            (0 <= self.replay_ratio <= 1, "--replay-ratio", self.replay_ratio, "in [0, 1]"),
            (
                self.unlabelled_loss in UNLABELLED_LOSSES,
                "--unlabelled-loss",
                self.unlabelled_loss,
                " or ".join(UNLABELLED_LOSSES),
            ),
            (self.ema_decay is None or 0 < self.ema_decay < 1, "--ema-decay", self.ema_decay, "in (0, 1)"),
            (self.checkpoint_every >= 1, "--checkpoint-every", self.checkpoint_every, ">= 1"),
            (self.keep_checkpoints >= 1, "--keep-checkpoints", self.keep_checkpoints, ">= 1"),
            (self.log_every >= 1, "--log-every", self.log_every, ">= 1"),
            (self.builtin_labelled >= 1, "--builtin-labelled", self.builtin_labelled, ">= 1"),
            (self.builtin_unlabelled >= 0, "--builtin-unlabelled", self.builtin_unlabelled, ">= 0"),
            (self.resolution is None or self.resolution >= 8, "--resolution", self.resolution, ">= 8"),
            (not (self.resume and self.overwrite), "--resume", "with --overwrite", "one of the two"),
            (self.num_workers >= 0, "--num-workers", self.num_workers, ">= 0"),
            (self.shuffle_buffer >= 1, "--shuffle-buffer", self.shuffle_buffer, ">= 1"),
            (self.validate in ("auto", "upfront", "lazy"), "--validate", self.validate, "auto, upfront or lazy"),
            (0 <= self.max_bad_fraction < 1, "--max-bad-fraction", self.max_bad_fraction, "in [0, 1)"),
        ]
        low, high = self.guidance_range
        checks += [
            (
                len(self.guidance_range) == 2 and 1 <= low <= high,
                "--guidance-range",
                self.guidance_range,
                "1 <= MIN <= MAX",
            ),
            (self.recipe in RECIPES, "--recipe", self.recipe, " or ".join(RECIPES)),
            (self.few_step_steps is None or self.few_step_steps >= 1, "--few-step-steps", self.few_step_steps, ">= 1"),
            (
                self.tiny_decoder_stage in TINY_DECODER_STAGES,
                "--tiny-decoder-stage",
                self.tiny_decoder_stage,
                ", ".join(TINY_DECODER_STAGES),
            ),
            (1 <= self.solver_steps <= 1000, "--solver-steps", self.solver_steps, "in 1..1000"),
            (0 < self.target_decay < 1, "--target-decay", self.target_decay, "in (0, 1)"),
            (
                self.sampling_steps is None or 1 <= self.sampling_steps <= 50,
                "--sampling-steps",
                self.sampling_steps,
                "in 1..50",
            ),
            (self.sampling_guidance >= 1, "--sampling-guidance", self.sampling_guidance, ">= 1"),
            (
                self.sampling_first_timestep is None or 0 <= self.sampling_first_timestep <= 999,
                "--sampling-first-timestep",
                self.sampling_first_timestep,
                "in 0..999",
            ),
            (self.tiny_decoder_width >= 4, "--tiny-decoder-width", self.tiny_decoder_width, ">= 4"),
        ]
        if self.few_step:
            checks.append(
                (
                    low <= self.sampling_guidance <= high,
                    "--sampling-guidance",
                    self.sampling_guidance,
                    "within --guidance-range",
                )
            )
        for ok, flag, value, allowed in checks:
            if not ok:
                raise ConfigError(f"`{flag}` must be {allowed}, got {value}")
        if self.teacher != "builtin" and self.labelled is None:
            raise ConfigError("`--labelled DIR` is required with a teacher other than builtin")
        if (self.few_step or self.tiny_decoder) != (self.from_run is not None) or (
            self.few_step and self.tiny_decoder
        ):
            raise ConfigError(
                "`--from RUN` goes with one of `--few-step` or `--tiny-decoder` (or `--tiny-decoder-from DIR`): each "
                "starts from a finished run",
                hint="refine-distill --from runs/demo --few-step -o runs/demo-4step, then "
                "refine-distill --from runs/demo-4step --tiny-decoder -o runs/demo-4step-tiny",
            )
        if self.streaming and self.validate == "upfront":
            raise ConfigError(
                "`--validate upfront` decodes the whole dataset before training, which `--streaming` never reads in "
                "full",
                hint="drop --validate upfront (streamed data is validated lazily, see --max-bad-fraction)",
            )
        if self.streaming and self.tiny_decoder:
            raise ConfigError(
                "`--streaming` does not apply to --tiny-decoder, which reads the run's image folder in full",
                hint="drop --streaming",
            )
        if self.few_step and (self.ema_decay is not None or self.stage2_steps):
            raise ConfigError(
                "the few-step stage keeps its own target network and has no stage 2",
                hint="drop --ema-decay / --stage2-steps (tune --target-decay instead)",
            )

    @property
    def objective(self) -> str:
        return "few_step" if self.few_step else "tiny_decoder" if self.tiny_decoder else "distill"

    @property
    def sampling(self) -> SamplingRecommendation:
        """How the student this config trains is meant to be sampled (written to student/sampling.json)."""
        if self.few_step:
            return SamplingRecommendation(
                self.sampling_steps or FEW_STEP_SAMPLING_STEPS,
                self.sampling_guidance,
                "LCMScheduler",
                tuple(self.guidance_range),
                self.sampling_first_timestep,
            )
        return dataclasses.replace(
            GUIDED_DEFAULT, steps=self.sampling_steps or GUIDED_DEFAULT.steps, guidance_scale=self.sampling_guidance
        )

    @property
    def uses_teacher_signals(self) -> bool:
        return self.loss_weights[1] > 0 or self.loss_weights[2] > 0

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["output_dir"] = str(self.output_dir)
        out["loss_weights"] = list(self.loss_weights)
        out["guidance_range"] = list(self.guidance_range)
        return out

    def resume_differences(self, saved: dict[str, Any], world: int = 1) -> list[str]:
        """Fields whose saved value differs from this config (ignoring those that may change on resume).

        `--grad-accum` may change with the number of processes `world` when their product, the micro-batches of an
        optimizer step, stays the same: a checkpoint of N processes resumes on M with the same global batch."""
        current = self.to_json()
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        free = set(RESUME_FREE_FIELDS)
        saved_world = (saved.get("resolved") or {}).get("world_size")
        if saved_world and saved_world * saved.get("grad_accum", 1) == world * self.grad_accum:
            free.add("grad_accum")
        return [
            f"{key}: saved {saved.get(key)!r}, now {value!r}"
            for key, value in current.items()
            if key not in free
            and key != "output_dir"
            and saved.get(key, defaults[key]) != value  # a field newer than the run: its default then
        ]


def read_run_config(run: Path, label: str | None = None) -> dict[str, Any]:
    """A finished run's `config.json` (cheap, no torch): the one reader of run dirs for `--from`, refine-eval and
    refine-export. `label` names the run in errors (default `run dir RUN`)."""
    where = label or f"run dir {run}"
    if not run.is_dir():
        raise ConfigError(f"{where} does not exist or is not a directory")
    path = run / "config.json"
    if not path.is_file():
        raise ConfigError(f"{where} has no config.json", hint="pass the -o of a refine-distill run")
    try:
        config = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path} cannot be read ({err})") from err
    if not isinstance(config, dict) or not isinstance(config.get("teacher"), str):
        raise ConfigError(f"{path} has no `teacher` entry", hint="is this a refine-distill run dir?")
    if not (run / "student" / "model_index.json").is_file():
        raise ConfigError(
            f"{where} has no student (student/model_index.json is missing): its training has not finished",
            hint=f"finish it with `refine-distill ... -o {run} --resume`",
        )
    return config


# What a few-step stage takes from the run it starts from.
INHERITED_FROM_RUN = ("teacher", "controlnet", "student", "preprocessor", "resolution")
INHERITED_IF_SAVED = {"teacher_config": None}  # newer than some runs: their default then


def with_run_settings(cfg: DistillConfig) -> DistillConfig:
    """`cfg` with the teacher, preset, preprocessor and resolution of `cfg.from_run` (unchanged without it)."""
    if cfg.from_run is None:
        return cfg
    run = Path(cfg.from_run)
    saved = read_run_config(run, f"`--from {run}`:")
    try:
        inherited = {key: saved[key] for key in INHERITED_FROM_RUN}
        inherited.update({key: saved.get(key, default) for key, default in INHERITED_IF_SAVED.items()})
        if cfg.labelled is None:
            inherited["labelled"] = saved["labelled"]
    except KeyError as err:
        raise ConfigError(f"`--from {run}`: its config.json lacks {err}") from err
    if (run / "stages").is_dir():  # a fast-recipe run (refine_control/training/recipe.py)
        raise ConfigError(
            f"`--from {run}`: that run holds the whole fast recipe (its student is the last stage's)",
            hint=f"start from its compact stage: --from {run}/stages/compact",
        )
    if cfg.few_step and saved.get("few_step"):
        raise ConfigError(f"`--from {run}`: that run is already a few-step student", hint="start from its --from run")
    if saved.get("tiny_decoder"):
        raise ConfigError(f"`--from {run}`: that run only added a tiny decoder", hint="start from its --from run")
    return dataclasses.replace(cfg, **inherited)
