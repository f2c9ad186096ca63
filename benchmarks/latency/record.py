"""The run as a result file (`refine_control.results`): `results/GROUP/NAME.json` with metrics, config, seed,
commit, command and wall time, as the other benchmarks write theirs."""

from pathlib import Path
from typing import Any

SEED = 0  # every feed and random weight of the run is drawn from seed 0


def _without_paths(files: dict[str, Any]) -> dict[str, Any]:
    """The temp-dir paths of the ONNX files mean nothing after the run; their sizes and INT8 reports stay."""
    return {k: {f: v for f, v in info.items() if f != "path"} for k, info in files.items()}


def write(report: dict[str, Any], name: str, root: str, wall_s: float, commit: tuple[str, bool | str]) -> Path:
    """Write `report` as the result file `root/GROUP/NAME.json` (`name` = GROUP/NAME)."""
    from refine_control.results import split_results_name, write_result

    models = {name: {**info, "files": _without_paths(info["files"])} for name, info in report["models"].items()}
    metrics = {
        "per_image": report["per_image"],
        "ratios": report["ratios"],
        "headline": report["headline"],
        "cases": report["cases"],
        "models": models,
        "peaks": report["peaks"],
        "noise_floor": report.get("noise_floor"),
    }
    return write_result(
        split_results_name(name),
        metrics=metrics,
        config={**report["config"], "counter": report["counter"]},
        seed=SEED,
        command=report["command"],
        wall_s=wall_s,
        notes="; ".join(report["notes"]),
        machine=report["machine"],
        root=root,
        commit=commit,
    )
