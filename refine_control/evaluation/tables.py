"""README tables rendered from the distillation result files: `results/presets/` (`benchmarks/presets.py`),
`results/recipe/` (`benchmarks/recipe.py`), `results/ablation/` (`benchmarks/ablation.py`) and `results/few_step/`
(`benchmarks/few_step.py`)."""

import re
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from refine_control.models.presets import STUDENT_PRESETS
from refine_control.results import ResultsError, Table, markdown_table, provenance, read_results, register_table
from refine_control.training.config import DistillConfig

Result = dict[str, Any]

# The bar a compact student must meet (README, "Student presets"): ratios to the teacher on the same samples.
BAR = {"macs_fewer": 4.0, "edge_f1_kept": 0.90, "mask_iou_kept": 0.90, "colour_kept": 0.95, "shape_kept": 0.95}
BAR_TEACHER_PSNR_DB = 24.0
# The fast student's targets (the fast-student issue): the share of the teacher's value each metric must keep.
FAST_TARGETS = {"edge_f1_strict": 0.90, "mask_iou": 0.90, "colour_acc": 0.95, "shape_acc": 0.95}

# metric key → (column title, digits, higher is better)
QUALITY = {
    "edge_f1": ("edge F1 ↑", 3, True),
    "mask_iou": ("mask IoU ↑", 3, True),
    "colour_acc": ("colour acc ↑", 3, True),
    "shape_acc": ("shape acc ↑", 3, True),
    "psnr_gt_db": ("PSNR vs GT ↑", 2, True),
    "teacher_psnr_db": ("PSNR vs teacher ↑", 2, True),
    "domain_fid": ("domain FID ↓", 2, False),
}
# An image-folder benchmark (`refine-eval --data`) has no ground truth, masks or shape oracle; its judge classifies
# the prompted class instead.
FOLDER_QUALITY = {
    "edge_f1": QUALITY["edge_f1"],
    "caption_acc": ("class acc ↑", 3, True),
    "teacher_psnr_db": QUALITY["teacher_psnr_db"],
    "domain_fid": QUALITY["domain_fid"],
}
METRICS = {**QUALITY, **FOLDER_QUALITY}  # name, digits, higher is better


def kept(result: Result) -> dict[str, float]:
    """The student's ratios to the teacher, the teacher PSNR and the cost ratio of one run."""
    m, t = result["metrics"], result["metrics"]["teacher"]
    return {
        "macs_fewer": m["teacher_macs_per_step"] / m["macs_per_step"],
        "edge_f1_kept": m["edge_f1"] / t["edge_f1"],
        "mask_iou_kept": m["mask_iou"] / t["mask_iou"],
        "colour_kept": m["colour_acc"] / t["colour_acc"],
        "shape_kept": m["shape_acc"] / t["shape_acc"],
        "teacher_psnr_db": m["teacher_psnr_db"],
    }


def meets_bar(result: Result) -> bool:
    ratios = kept(result)
    return all(ratios[k] >= v for k, v in BAR.items()) and ratios["teacher_psnr_db"] >= BAR_TEACHER_PSNR_DB


def _stat(values: Sequence[float], fmt: Callable[[float], str]) -> str:
    if len(values) == 1:
        return fmt(values[0])
    return f"{fmt(statistics.fmean(values))} ± {fmt(statistics.stdev(values))}"


def _num(digits: int) -> Callable[[float], str]:
    return lambda v: f"{v:.{digits}f}"


def _pct(value: float) -> str:
    return f"{100 * value:.0f}%"


def _quality_cells(runs: Sequence[Result], keys: Sequence[str]) -> list[str]:
    return [_stat([r["metrics"][k] for r in runs], _num(METRICS[k][1])) for k in keys]


def _teacher_cells(result: Result, keys: Sequence[str]) -> list[str]:
    teacher = result["metrics"]["teacher"]
    return [f"{teacher[k]:.{METRICS[k][1]}f}" if k in teacher else "-" for k in keys]


def _by_student(results: Sequence[Result]) -> dict[str, list[Result]]:
    out: dict[str, list[Result]] = {}
    for r in results:
        out.setdefault(r["config"]["student"], []).append(r)
    return out


def _scoring(result: Result) -> str:
    e = result["config"]["eval"]
    where = f"held-out {e['split']} shapes" if "split" in e else f"images of {Path(e['data']).name}"
    return (
        f"`refine-eval` on {e['num_samples']} {where}, {e['steps']} steps, guidance {e['guidance_scale']:g}, the same "
        "noise for student and teacher"
    )


def _recipe(config: dict[str, Any]) -> str:
    return (
        f"{config['max_steps']} steps, batch {config['batch_size']}, learning rate {config['learning_rate']:g} "
        f"{config['lr_schedule']}, init `{config['init']}`, min-SNR γ {config['snr_gamma']}, "
        f"{config['builtin_labelled']} labelled shapes"
    )


@register_table("presets")
def presets_table(root: Path) -> Table:
    results = read_results("presets", root)
    header = [
        "preset", "params", "GMAC/step", "distil time", "edge F1 (kept)", "mask IoU (kept)", "colour acc",
        "shape acc", "PSNR vs teacher", "domain FID", "meets the bar", "use when",
    ]  # fmt: skip
    first, teacher = results[0]["metrics"], results[0]["metrics"]["teacher"]
    rows = [
        [
            "teacher", f"{first['teacher_params'] / 1e6:.2f} M", f"{first['teacher_macs_per_step'] / 1e9:.3f}", "-",
            f"{teacher['edge_f1']:.3f}", f"{teacher['mask_iou']:.3f}", f"{teacher['colour_acc']:.3f}",
            f"{teacher['shape_acc']:.3f}", "-", f"{teacher['domain_fid']:.2f}", "-", "the reference",
        ]
    ]  # fmt: skip
    by_preset = _by_student(results)
    for name in STUDENT_PRESETS.names():
        runs = by_preset.get(name)
        if not runs:
            continue
        m, k = [r["metrics"] for r in runs], [kept(r) for r in runs]
        rows.append(
            [
                f"`{name}`",
                f"{m[0]['params'] / 1e6:.2f} M",
                f"{m[0]['macs_per_step'] / 1e9:.3f} ({k[0]['macs_fewer']:.2f}× fewer)",
                _stat([x["distil_s"] / 60 for x in m], _num(1)) + " min",
                _stat([x["edge_f1"] for x in m], _num(3)) + f" ({_stat([x['edge_f1_kept'] for x in k], _pct)})",
                _stat([x["mask_iou"] for x in m], _num(3)) + f" ({_stat([x['mask_iou_kept'] for x in k], _pct)})",
                _stat([x["colour_acc"] for x in m], _num(3)),
                _stat([x["shape_acc"] for x in m], _num(3)),
                _stat([x["teacher_psnr_db"] for x in m], _num(1)) + " dB",
                _stat([x["domain_fid"] for x in m], _num(2)),
                "yes" if all(meets_bar(r) for r in runs) else "no",
                STUDENT_PRESETS.get(name).use_when,
            ]
        )
    seeds = sorted({r["seed"] for r in results})
    missing = [n for n in STUDENT_PRESETS.names() if n not in by_preset]
    caption = (
        f"Built-in teacher; every student distilled with the `refine-distill` defaults ({_recipe(results[0]['config'])})"
        f", seeds {', '.join(map(str, seeds))} (mean ± std); {_scoring(results[0])}. MACs per denoiser step at "
        "batch 1 (UNet + ControlNet). The bar: ≥ 4× fewer MACs, ≥ 90% of the teacher's edge F1 and mask IoU, ≥ 95% "
        "of its colour and shape accuracy, ≥ 24 dB PSNR vs the teacher, on every seed. Distil time: wall clock on the "
        "shared 2-core machine, one thread per run with other runs alongside (2-3 at a time): a rough guide only. "
        + (f"Not distilled in this sweep: {', '.join(missing)}. " if missing else "")
        + provenance(results)
    )
    return Table(markdown_table(header, rows), caption)


# Fields of a run's config.json that do not change what is trained.
_BOOKKEEPING = {
    "output_dir",
    "overwrite",
    "resume",
    "checkpoint_every",
    "keep_checkpoints",
    "log_every",
    "resolved",
    "eval",
}


def _changed(config: dict[str, Any], reference: dict[str, Any]) -> str:
    diffs = [f"{k} = {config[k]}" for k in config if k not in _BOOKKEEPING and config[k] != reference.get(k)]
    return ", ".join(diffs) or "(the default recipe)"


@register_table("recipe")
def recipe_table(root: Path) -> Table:
    timings = ("train-step", "eval-time")  # benchmarks/train_step.py and eval_time.py share the group
    results = {r["name"]: r for r in read_results("recipe", root) if not r["name"].startswith(timings)}
    default = results["default"]
    keys = ["edge_f1", "mask_iou", "colour_acc", "shape_acc", "teacher_psnr_db", "domain_fid"]
    header = ["variant", "what differs from the default", *(QUALITY[k][0] for k in keys), "meets the bar"]
    rows = [
        [
            f"`{name}`",
            _changed(r["config"], default["config"]),
            *_quality_cells([r], keys),
            "yes" if meets_bar(r) else "no",
        ]
        for name, r in sorted(results.items(), key=lambda item: item[0] != "default")
    ]
    rows.append(["teacher", "-", *_teacher_cells(default, keys), "-"])
    caption = (
        f"Default recipe: student `{default['config']['student']}`, {_recipe(default['config'])}; one seed (0); "
        f"{_scoring(default)}. Chosen on the validation split; the test split reports only the chosen recipe (preset "
        "table). " + provenance(list(results.values()))
    )
    return Table(markdown_table(header, rows), caption)


def _beats(runs: Sequence[Result], others: Sequence[Result], key: str) -> bool:
    """Whether `runs` are strictly better than `others` on `key`, by their means."""
    ours, theirs = (statistics.fmean(r["metrics"][key] for r in group) for group in (runs, others))
    return ours > theirs if METRICS[key][2] else ours < theirs


@register_table("ablation")
def ablation_table(root: Path) -> Table:
    keys = list(QUALITY)
    variants = _by_variant(read_results("ablation", root))
    default = DistillConfig.__dataclass_fields__["student"].default
    full = [r for r in read_results("presets", root) if r["config"]["student"] == default]
    rows_spec = [
        ("(a) scratch: random init, task loss only", variants.get("scratch", [])),
        ("(b) + output KD", variants.get("output-kd", [])),
        ("(c) + feature KD (the tri-level loss)", variants.get("feature-kd", [])),
        ("(d) the default: (c) with weights selected from the teacher", full),
    ]
    not_run = [label.split(" ", 1)[0] for label, runs in rows_spec if not runs]
    rows_spec = [(label, runs) for label, runs in rows_spec if runs]
    rows = [[label, *_quality_cells(runs, keys)] for label, runs in rows_spec]
    reference = rows_spec[0][1][0]
    rows.append(["teacher", *_teacher_cells(reference, keys)])
    header = ["variant", *(QUALITY[k][0] for k in keys)]
    recipe = _recipe(reference["config"]).split(", init")[0]
    caption = (
        f"Student `{default}` ({recipe}; init as each row says); {_scoring(reference)}; mean ± std where a row has "
        "several seeds. "
    )
    if variants.get("scratch") and full:
        worse = [QUALITY[k][0].rstrip(" ↑↓") for k in keys if not _beats(full, variants["scratch"], k)]
        caption += (
            "The default beats scratch on every metric. "
            if not worse
            else f"The default does not beat scratch on: {', '.join(worse)}. "
        )
    if not_run:
        caption += f"Not run yet: {', '.join(not_run)}. "
    return Table(markdown_table(header, rows), caption + provenance([r for _, runs in rows_spec for r in runs]))


@register_table("label_scarcity")
def label_scarcity_table(root: Path) -> Table:
    """Scratch vs the default recipe at each labelled-set size: does the teacher matter when labels are scarce?"""
    keys = list(QUALITY)
    default = DistillConfig.__dataclass_fields__["student"].default
    ablation = read_results("ablation", root)
    scratch = [
        r for r in ablation if r["config"]["loss_weights"] == [1.0, 0.0, 0.0] and r["config"]["init"] == "random"
    ]
    distilled = [r for r in ablation if r["name"].startswith("default-")]
    distilled += [r for r in read_results("presets", root) if r["config"]["student"] == default]
    sizes = sorted({r["config"]["builtin_labelled"] for r in scratch + distilled})
    rows, verdicts = [], []
    for size in sizes:
        arms = {
            "scratch (random init, task loss only)": [r for r in scratch if r["config"]["builtin_labelled"] == size],
            "the default recipe (teacher init, tri-level loss)": [
                r for r in distilled if r["config"]["builtin_labelled"] == size
            ],
        }
        for label, runs in arms.items():
            if runs:
                rows.append([str(size), label, *_quality_cells(runs, keys)])
        if all(arms.values()):
            s, d = arms.values()
            better = [QUALITY[k][0].rstrip(" ↑↓") for k in keys if _beats(d, s, k)]
            verdicts.append(
                f"with {size} labelled shapes the default beats scratch on {len(better)} of {len(keys)} metrics"
                + (f" ({', '.join(better)})" if better else "")
            )
    runs = scratch + distilled
    rows.append(["-", "teacher", *_teacher_cells(runs[0], keys)])
    header = ["labelled shapes", "recipe", *(QUALITY[k][0] for k in keys)]
    caption = (
        f"Student `{default}`, {runs[0]['config']['max_steps']} steps, batch {runs[0]['config']['batch_size']} "
        f"for every arm; {_scoring(runs[0])}; mean ± std over seeds where there are several. "
        + ("; ".join(verdicts)[:1].upper() + "; ".join(verdicts)[1:] + ". " if verdicts else "")
        + provenance(runs)
    )
    return Table(markdown_table(header, rows), caption)


@register_table("semi_supervised")
def semi_supervised_table(root: Path) -> Table:
    """The semi-supervised stage on the built-in shapes (`<arm>-labelled<N>` in results/ablation/)."""
    return _semi_supervised(root, "", QUALITY, "shapes")


@register_table("semi_supervised_fashion")
def semi_supervised_fashion_table(root: Path) -> Table:
    """The same on Fashion-MNIST image folders (`fashion-<arm>-labelled<N>`)."""
    return _semi_supervised(root, "fashion-", FOLDER_QUALITY, "images")


# The semi-supervised verdicts: (arm, its control, the claim, the control's side of it).
COMPARISONS = (
    ("stage2", "longer", "at equal compute, stage 2 beats more labelled steps", "more labelled steps ahead"),
    (
        "stage2",
        "replay",
        "stage 2 beats the same schedule on labelled samples only",
        "the labelled-only schedule ahead",
    ),
    (
        "stage2",
        "stage2task",
        "stage 2 with the teacher's targets beats the same images without them",
        "the images alone ahead",
    ),
    (
        "stage2task",
        "longer",
        "the unlabelled images without the teacher's targets beat more labelled steps",
        "more labelled steps ahead",
    ),
)


def _semi_supervised(root: Path, prefix: str, metrics: dict[str, tuple[str, int, bool]], unit: str) -> Table:
    """Stage 2 on unlabelled images added after the labelled steps, against as many more labelled steps, for each
    labelled-set size that has runs (`stage2-`, `longer-`; also `default-`: the same labelled steps without stage 2,
    `replay-`: stage 2's schedule on labelled samples only, which isolates what the unlabelled images add, and
    `stage2task-`: the unlabelled images without the teacher's targets, which isolates what the teacher adds)."""
    keys = list(metrics)
    variants = {
        n[len(prefix) :]: runs
        for n, runs in _by_variant(read_results("ablation", root)).items()
        if n.startswith(prefix) and not n[len(prefix) :].startswith("fashion-")
    }
    sizes = sorted({int(n.split("-labelled")[1]) for n in variants if n.startswith(("stage2-", "longer-"))})
    if not sizes:
        raise ResultsError(f"no semi-supervised runs in results/ablation/ ({prefix}stage2-labelled<N>, ...)")

    def label(run: Result) -> str:
        c, r = run["config"], run["config"]["resolved"]
        text = f"{r['labelled_images']} labelled, {c['max_steps']} labelled steps"
        if r["stage2_steps"]:
            text += f" + stage 2: {r['stage2_steps']} steps"
            text += " on labelled only" if c["replay_ratio"] == 1 else f" with {r['unlabelled_images']} unlabelled"
            if c.get("unlabelled_loss") == "task":
                text += " (task loss only on them, no teacher targets)"
        return text

    def seeds(runs: Sequence[Result]) -> str:
        return ", ".join(str(s) for s in sorted(r["seed"] for r in runs))

    def verdict(ours: Sequence[Result], theirs: Sequence[Result], control: str) -> str:
        """Where `ours` is ahead by the mean, where in every paired seed, and where `theirs` is ahead in every seed."""
        better = [metrics[k][0].rstrip(" ↑↓") for k in keys if _beats(ours, theirs, k)]
        text = f"{len(better)} of {len(keys)} metrics" + (f" ({', '.join(better)})" if better else "")
        paired = sorted({r["seed"] for r in ours} & {r["seed"] for r in theirs})

        def always(a: Sequence[Result], b: Sequence[Result]) -> str:
            names = [
                metrics[k][0].rstrip(" ↑↓")
                for k in keys
                if paired
                and all(_beats([r for r in a if r["seed"] == s], [r for r in b if r["seed"] == s], k) for s in paired)
            ]
            return ", ".join(names) if names else "none"

        n = f"{len(paired)} seed" + ("s" if len(paired) != 1 else "")
        return text + f"; in each of its {n} on {always(ours, theirs)}; {control} in each on {always(theirs, ours)}"

    rows, verdicts, used = [], [], []
    for size in sizes:
        arms = {
            arm: variants.get(f"{arm}-labelled{size}", [])
            for arm in ("default", "stage2", "stage2task", "longer", "replay")
        }
        for runs in arms.values():
            if runs:
                rows.append([label(runs[0]), seeds(runs), *_quality_cells(runs, keys)])
                used += runs
        for ours, theirs, claim, control in COMPARISONS:
            if arms[ours] and arms[theirs]:
                text = f"with {size} labelled {unit}, {claim} on " + verdict(arms[ours], arms[theirs], control)
                verdicts.append(text)
    rows.append(["teacher", "-", *_teacher_cells(used[0], keys)])
    caption = f"Student `{used[0]['config']['student']}`, the default recipe otherwise; {_scoring(used[0])}. "
    if verdicts:
        text = "; ".join(verdicts)
        caption += text[:1].upper() + text[1:] + ". "
    header = ["training", "seeds", *(metrics[k][0] for k in keys)]
    return Table(markdown_table(header, rows), caption + provenance(used))


def _by_variant(results: Sequence[Result]) -> dict[str, list[Result]]:
    """Group `<variant>-seed<k>` result files by variant."""
    out: dict[str, list[Result]] = {}
    for r in results:
        out.setdefault(r["name"].rsplit("-seed", 1)[0], []).append(r)
    return out


@register_table("demo")
def demo_table(root: Path) -> Table:
    """The last recorded `make demo`: teacher vs student side by side, and where the time went."""
    from refine_control.demo import side_by_side

    (demo,) = read_results("demo", root)
    m = demo["metrics"]
    config = demo["config"]
    lines = side_by_side({"teacher": m["teacher"], "student": m["student"]}, config["eval_samples"])
    stages = ", ".join(f"{name} {seconds / 60:.1f} min" for name, seconds in m["seconds"].items())
    kept = m.get("reused", ["distil"] if config.get("reuse") else [])  # older files: --reuse kept the distillation
    reused = (
        f" ({', '.join(kept)} ran in an earlier invocation of the same defaults: the minutes shown are the ones "
        "recorded then)"
        if kept
        else ""
    )
    start = m.get("load_average_start")
    load = "" if start is None else f"{start} at the start, "
    caption = (
        f"`make demo` after setup: {sum(m['seconds'].values()) / 60:.1f} min ({stages}){reused}; machine: "
        f"{demo['machine'].get('cpu', 'unknown')}, {demo['machine'].get('logical_cpus')} logical CPUs, load average "
        f"{load}{demo['machine'].get('load_average_1min', '?')} at the end (above 1: other work shared the cores). "
        + provenance([demo])
    )
    return Table("```\n" + "\n".join(lines[:-1]) + "\n```\n\n" + lines[-1] + ".", caption)


@register_table("recipe_seeds")
def recipe_seeds_table(root: Path) -> Table:
    """The default recipe (the demo's commands) over training seeds: teacher and student per metric, the share kept
    as mean ± std over seeds and per seed, against the fast student's targets (benchmarks/recipe_seeds.py)."""
    from refine_control.demo import QUALITY_LABELS

    runs = sorted(read_results("recipe_seeds", root), key=lambda r: r["seed"])
    if not runs:
        raise ResultsError("no results in results/recipe_seeds/ (python benchmarks/recipe_seeds.py)")
    rows, met, missed = [], [], []
    for key, label in QUALITY_LABELS.items():
        teacher = [r["metrics"]["teacher"][key] for r in runs]
        student = [r["metrics"]["student"][key] for r in runs]
        share = [s / t for s, t in zip(student, teacher, strict=True)]
        lows = [r["metrics"]["student"].get("intervals", {}).get(f"{key}_kept", [None])[0] for r in runs]
        target = FAST_TARGETS.get(key)
        if target is not None:
            (met if min(share) >= target else missed).append(f"{label} (≥ {_pct(target)})")  # point estimates
        rows.append(
            [
                label,
                _stat(teacher, _num(3)),
                _stat(student, _num(3)),
                _stat(share, _pct),
                ", ".join(_pct(v) for v in share),
                "-" if None in lows else _pct(min(lows)),
                "-" if target is None else f"≥ {_pct(target)}",
            ]
        )
    psnr = [r["metrics"]["student"]["teacher_psnr_db"] for r in runs]
    psnr_cells = [_stat(psnr, _num(1)), "-", ", ".join(f"{v:.1f}" for v in psnr), "-", "-"]
    rows.append(["PSNR vs teacher (dB)", "-", *psnr_cells])
    first = runs[0]["metrics"]
    seeds = ", ".join(str(r["seed"]) for r in runs)
    caption = (
        f"The default recipe distilled and scored with training and evaluation seeds {seeds} (`make demo`'s "
        f"commands): the student at its own {first['student']['steps']} steps against the teacher's "
        f"{first['teacher']['steps']} guided steps, {runs[0]['config']['eval']['num_samples']} held-out test shapes "
        "per seed; mean ± std over seeds; lowest bound: the lowest lower end of a seed's paired bootstrap 95% "
        "interval over its images. "
        + (f"At the target in every seed, by the point estimate: {', '.join(met)}. " if met else "")
        + (f"Below the target in at least one seed: {', '.join(missed)}. " if missed else "")
        + provenance(runs)
    )
    header = ["metric", "teacher", "student", "kept of the teacher's", "kept, per seed", "lowest bound", "target"]
    return Table(markdown_table(header, rows), caption)


@register_table("few_step_schedule")
def few_step_schedule_table(root: Path) -> Table:
    """The few-step student at 1–4 steps with the LCM scheduler's timesteps and with ones that skip t = 999, chosen
    on validation shapes and scored on test shapes (benchmarks/few_step_timesteps.py)."""
    by_name = {r["name"]: r for r in read_results("few_step", root)}
    val, test = by_name["timesteps-val"], by_name["timesteps-test"]

    def kept(row: dict, metric: str) -> str:
        low, high = row[f"{metric}_kept_interval"]
        return f"{100 * row[f'{metric}_kept']:.0f}% [{100 * low:.0f}–{100 * high:.0f}%]"

    header = ["schedule", "timesteps", "strict edge F1 kept (val)", "strict edge F1 kept (test)", "edge P / R (test)",
              "mask IoU kept (test)", "colour ΔE (test) ↓"]  # fmt: skip
    teacher = test["metrics"]["teacher"]
    rows = [
        ["teacher, 20 guided steps", "DDIM", "–", "–",
         f"{teacher['edge_precision_strict']:.2f} / {teacher['edge_recall_strict']:.2f}", "–",
         f"{teacher['colour_delta_e']:.1f}"]
    ]  # fmt: skip
    for name, row in test["metrics"]["schedules"].items():
        rows.append(
            [name, ", ".join(map(str, row["timesteps"])), kept(val["metrics"]["schedules"][name], "edge_f1_strict"),
             kept(row, "edge_f1_strict"), f"{row['edge_precision_strict']:.2f} / {row['edge_recall_strict']:.2f}",
             kept(row, "mask_iou"), f"{row['colour_delta_e']:.1f}"]
        )  # fmt: skip
    caption = (
        f"The recorded demo's few-step student (`{test['config']['run']}`, guidance scale "
        f"{test['config']['guidance_scale']:g} as an input). Schedules were chosen on {val['config']['samples']} "
        f"validation shapes (every schedule tried is in the val result file), then scored once on "
        f"{test['config']['samples']} test shapes; the same prompts, controls, initial noise and step noise for every "
        "row; percentages are of the teacher's, with paired bootstrap 95% intervals over the images. "
        + provenance([val, test])
    )
    return Table(markdown_table(header, rows), caption)


@register_table("few_step_steps")
def few_step_steps_table(root: Path) -> Table:
    """The few-step student's recommended steps chosen on validation shapes by a written rule
    (benchmarks/few_step_steps.py)."""
    (result,) = [r for r in read_results("few_step", root) if r["name"] == "steps-val"]
    metrics, config = result["metrics"], result["config"]
    names = {"edge_f1_strict": "strict edge F1", "mask_iou": "mask IoU", "colour_acc": "colour accuracy",
             "shape_acc": "shape accuracy"}  # fmt: skip
    keys = [key for key in names if f"{key}_kept" in config["rule"]]
    header = ["steps", "timesteps", *(f"{names[k]} kept" for k in keys)]
    rows = []
    for steps, row in metrics["steps"].items():
        cells = []
        for key in keys:
            low, high = row[f"{key}_kept_interval"]
            cells.append(f"{100 * row[f'{key}_kept']:.0f}% [{100 * low:.0f}–{100 * high:.0f}%]")
        rows.append([steps, ", ".join(map(str, row["timesteps"])), *cells])
    bars = ", ".join(f"{names[key]} {100 * config['rule'][f'{key}_kept']:.0f}%" for key in keys)
    caption = (
        f"`refine-eval {config['run']} --split val --steps N --first-timestep {config['first_timestep']}` on "
        f"{config['samples']} validation shapes against the teacher's 20 guided steps (same prompts, controls and "
        "noise); paired bootstrap 95% intervals over the images. The rule, fixed before the run: the fewest steps "
        f"whose point estimates keep at least {bars} of the teacher's. It picks **{metrics['chosen_steps']}**, the "
        "default of `--sampling-steps` for a few-step student. " + provenance([result])
    )
    return Table(markdown_table(header, rows), caption)


@register_table("few_step")
def few_step_table(root: Path) -> Table:
    """The few-step student at 1, 2, 4, 8 steps (no guidance pair) against the teacher's 20 guided steps."""
    # steps1, steps4-tiny-decoder, ...: not the schedule probe (timesteps-*) nor the choice of steps (steps-val)
    scored = [r for r in read_results("few_step", root) if re.match(r"steps\d", r["name"])]
    runs = sorted(scored, key=lambda r: r["config"]["eval"]["steps"])
    keys = ["edge_f1", "mask_iou", "colour_acc", "shape_acc"]
    header = ["model", "steps", "passes per step", *(QUALITY[k][0] for k in keys), "PSNR vs teacher ↑", "domain FID ↓"]
    teacher = runs[0]["metrics"]["teacher"]
    rows = [
        ["teacher", "20", "2 (guidance pair)", *_teacher_cells(runs[0], keys), "-", f"{teacher['domain_fid']:.2f}"]
    ]
    for r in runs:
        m = r["metrics"]
        cells = [f"{m[k]:.3f} ({100 * m[k] / teacher[k]:.0f}%)" for k in keys]
        label = "few-step student + tiny VAE" if r["config"].get("tiny_decoder") else "few-step student"
        rows.append(
            [
                label, str(r["config"]["eval"]["steps"]), "1 (scale embedded)", *cells,
                f"{m['teacher_psnr_db']:.2f}", f"{m['domain_fid']:.2f}",
            ]
        )  # fmt: skip
    first = runs[0]
    caption = (
        f"The few-step student: `refine-distill --from RUN --few-step` ({first['config']['max_steps']} steps of latent "
        f"consistency distillation, learning rate {first['config']['learning_rate']:g}) on the default "
        f"`{first['config']['student']}` student; guidance scale {first['config']['eval']['guidance_scale']:g} given "
        "as an input, LCM scheduler. The teacher samples 20 DDIM steps with classifier-free guidance 3. "
        f"`refine-eval` on {first['config']['eval']['num_samples']} held-out {first['config']['eval']['split']} shapes, "
        "the same prompts, controls and initial noise for both; percentages are of the teacher. " + provenance(runs)
    )
    return Table(markdown_table(header, rows), caption)
