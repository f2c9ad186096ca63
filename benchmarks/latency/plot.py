"""Quality vs latency: quality from `refine-eval` JSON reports, per-image time from this run, drawn with
matplotlib (the optional `plot` extra: `pip install -e ".[plot]"`)."""

import json
from pathlib import Path
from typing import Any

from .config import BenchConfig

MISSING = 'plot skipped: matplotlib is not installed (pip install -e ".[plot]" to get it)'


def read_quality(cfg: BenchConfig, models: list[str]) -> dict[str, float]:
    """Quality per model from refine-eval JSON files: the model's metric and, when present, its teacher's."""
    from refine_control.errors import ConfigError

    runs = {str(Path(d).resolve()): name for name, d in cfg.runs}
    scores: dict[str, float] = {}
    for name, file in cfg.quality:
        try:
            data = json.loads(Path(file).read_text("utf-8"))
            metrics, columns = data["metrics"], data.get("columns", {})
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ConfigError(f"--quality {file}: not a refine-eval JSON report ({err})") from err
        model = name or runs.get(str(Path(str(data.get("target", ""))).resolve()))
        if model not in models:
            raise ConfigError(
                f"--quality {file}: no measured model matches it (target {data.get('target')!r})",
                hint="pass it as NAME=FILE with NAME one of: " + ", ".join(models),
            )
        if cfg.quality_metric not in metrics:
            raise ConfigError(f"--quality {file} has no metric {cfg.quality_metric!r}; it has: {', '.join(metrics)}")
        scores[model] = float(metrics[cfg.quality_metric])
        teacher = columns.get("teacher", {}) if isinstance(columns, dict) else {}
        if model != "teacher" and cfg.quality_metric in teacher:
            scores.setdefault("teacher", float(teacher[cfg.quality_metric]))
    return scores


def quality_points(report: dict[str, Any], scores: dict[str, float]) -> list[dict[str, Any]]:
    """(seconds per image as the model samples, quality) per scored model × runtime, at the smallest size."""
    size = min(int(s) for s in report["config"]["sizes"])
    return [
        {"model": r["model"], "runtime": r["runtime"], "image_s": r["image_s"], "quality": scores[r["model"]]}
        for r in report["per_image"]
        if r["model"] in scores and r["size"] == size
    ]


def plot_quality(points: list[dict[str, Any]], metric: str, path: Path) -> bool:
    """Scatter of per-image latency (log x) vs quality, one colour per runtime, written atomically as PNG.
    Returns False (and draws nothing) when matplotlib is not installed."""
    try:
        import matplotlib
        import matplotlib.ticker

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    import io

    from refine_control.atomic import write_bytes

    fig, ax = plt.subplots(figsize=(7.6, 4.8))
    for runtime in sorted({p["runtime"] for p in points}):
        mine = [p for p in points if p["runtime"] == runtime]
        ax.scatter([p["image_s"] for p in mine], [p["quality"] for p in mine], label=runtime)
        for p in mine:
            ax.annotate(p["model"], (p["image_s"], p["quality"]), textcoords="offset points", xytext=(5, 3))
    ax.set(
        xscale="log", xlabel="seconds per image (as each model samples)", ylabel=metric, title=f"{metric} vs latency"
    )
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # labelled minor ticks overlap on a log axis
    ax.legend()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    write_bytes(path, buffer.getvalue())
    return True
