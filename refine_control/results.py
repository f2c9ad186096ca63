"""Results as files: one small JSON per run under `results/<group>/<name>.json`, and a registry of tables
rendered from them (see `benchmarks/tables.py`, which rewrites the marked tables in README.md and docs/).

Every result file records what produced it, so a number in the docs can be traced to its evidence:

    {"group": "weaklabel/upllrs", "name": "fmnist-g0.01-mu0.3-s0", "metrics": {...}, "config": {...},
     "seed": 0, "commit": "<git HEAD sha>", "dirty": false, "command": "refine-weaklabel upllrs ...",
     "wall_s": 93.4, "date": "2026-11-28T17:30:32+00:00", "machine": {...}, "notes": "..."}

`dirty` says whether tracked files other than `results/` and Markdown differed from `commit` (documentation
edits do not change what code produced a number); a long run should take `git_state()` when it starts and pass
it as `commit=`, since the checkout may change while it runs. Without git, `commit` and
`dirty` are "unknown".

A table is a function `(results_root: Path) -> Table` registered under a name with `@register_table("NAME")`;
a document embeds it between `<!-- table:NAME -->` and `<!-- /table:NAME -->`.
"""

import datetime
import json
import math
import os
import platform
import re
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refine_control.atomic import write_json
from refine_control.errors import RefineError

REQUIRED_KEYS = ("group", "name", "metrics", "config", "seed", "commit", "dirty", "command", "wall_s", "date")
DEFAULT_ROOT = Path("results")
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+-]*$")
_CODE_ROOT = Path(__file__).resolve().parent
# What counts as "the code": every tracked file except the results themselves and Markdown documentation.
_DIRTY_PATHSPEC = (":(top)", ":(top,exclude)results", ":(top,exclude,glob)**/*.md")


class ResultsError(RefineError):
    """A result file is missing, malformed, or lacks a required key."""


def _check_segment(value: str, what: str) -> None:
    if not _SEGMENT.match(value) or value.endswith(".json"):
        raise ValueError(f"{what} {value!r} must match [A-Za-z0-9][A-Za-z0-9._=+-]* (no slashes, no .json)")


def check_group(group: str) -> None:
    """A group is one or more `/`-separated name segments, e.g. `weaklabel/upllrs`."""
    for part in group.split("/"):
        _check_segment(part, "group segment")


def result_path(group: str, name: str, root: str | os.PathLike[str] = DEFAULT_ROOT) -> Path:
    check_group(group)
    _check_segment(name, "result name")
    return Path(root) / group / f"{name}.json"


def script_command(script: str, argv: Sequence[str] | None) -> str:
    """The command line a result file records for a script run as `python SCRIPT ARGS` (`argv` None: this
    process's own arguments)."""
    return f"python {script} " + " ".join(sys.argv[1:] if argv is None else argv)


def split_results_name(text: str) -> tuple[str, str]:
    """A benchmark's `--results-name GROUP/NAME` (the group may have several segments) → (group, name);
    `ConfigError` when malformed, so a script can refuse it before its run rather than after."""
    from refine_control.errors import ConfigError

    group, _, name = text.rpartition("/")
    try:
        result_path(group, name)
    except ValueError as err:
        raise ConfigError(f"--results-name {text!r}: expected GROUP/NAME, e.g. latency/builtin ({err})") from None
    return group, name


def git_state(cwd: str | os.PathLike[str] | None = None) -> tuple[str, bool | str]:
    """(HEAD sha, dirty) of the repository holding `cwd` (default: this package's code); "unknown" without git."""
    where = str(cwd or _CODE_ROOT)
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=20, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", *_DIRTY_PATHSPEC],
            cwd=where, capture_output=True, text=True, timeout=20, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown", "unknown"
    return (sha or "unknown"), bool(status.strip())


def machine_info(threads: int | None = None) -> dict[str, Any]:
    """CPU model, logical CPUs, torch threads in use (when torch is imported) and the 1-min load average."""
    cpu = platform.processor() or "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    if threads is None:
        import sys

        torch = sys.modules.get("torch")
        threads = torch.get_num_threads() if torch is not None else None
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "threads": threads,
        "python": platform.python_version(),
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def _strict(obj: Any) -> Any:
    """NaN/inf → None, tuples → lists, so the file is strict JSON and reads back equal."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    return obj


def write_result(
    target: str | os.PathLike[str] | tuple[str, str],
    *,
    metrics: Mapping[str, Any],
    config: Mapping[str, Any],
    seed: int | None,
    command: str,
    wall_s: float,
    notes: str | None = None,
    machine: Mapping[str, Any] | None = None,
    root: str | os.PathLike[str] = DEFAULT_ROOT,
    commit: tuple[str, bool | str] | None = None,
) -> Path:
    """Write one result file atomically and return its path.

    Args:
        target: `(group, name)` → `root/group/name.json`; or a path `.../<group>/<name>.json` (the group is the
            path's folder relative to `root` when it lies under `root`, else the folder's name).
        command: the exact command line that reproduces this file.
        machine: defaults to `machine_info()`.
        commit: (sha, dirty) to record; defaults to `git_state()` of this package's repository.
    """
    root = Path(root)
    if isinstance(target, tuple):
        group, name = target
        path = result_path(group, name, root)
    else:
        path = Path(target)
        if path.suffix != ".json":
            raise ValueError(f"a result file must end in .json, got {path}")
        try:
            group = path.parent.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            group = path.parent.name
        name = path.stem
        check_group(group)
        _check_segment(name, "result name")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise TypeError(f"`seed` must be an int or None, got {seed!r}")
    sha, dirty = commit if commit is not None else git_state()
    obj = {
        "group": group,
        "name": name,
        "metrics": dict(metrics),
        "config": dict(config),
        "seed": seed,
        "commit": sha,
        "dirty": dirty,
        "command": command,
        "wall_s": round(float(wall_s), 3),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": dict(machine) if machine is not None else machine_info(),
    }
    if notes:
        obj["notes"] = notes
    write_json(path, _strict(obj))
    return path


def validate_result(obj: Any, path: str | os.PathLike[str]) -> dict[str, Any]:
    """Return `obj` if it is a well-formed result; raise ResultsError naming `path` otherwise."""
    if not isinstance(obj, dict):
        raise ResultsError(f"{path}: a result file must hold a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in obj]
    if missing:
        raise ResultsError(f"{path}: missing required key(s) {', '.join(missing)}")
    types = {"metrics": dict, "config": dict, "command": str, "group": str, "name": str, "date": str}
    for key, typ in types.items():
        if not isinstance(obj[key], typ):
            raise ResultsError(f"{path}: `{key}` must be a {typ.__name__}")
    if obj["seed"] is not None and (not isinstance(obj["seed"], int) or isinstance(obj["seed"], bool)):
        raise ResultsError(f"{path}: `seed` must be an integer or null")
    if not isinstance(obj["wall_s"], (int, float)) or isinstance(obj["wall_s"], bool):
        raise ResultsError(f"{path}: `wall_s` must be a number")
    return obj


def read_results(group: str, root: str | os.PathLike[str] = DEFAULT_ROOT) -> list[dict[str, Any]]:
    """Every `root/group/*.json` (not sub-groups), validated, sorted by name.

    Raises:
        ResultsError: the group folder does not exist, a file is not JSON, lacks a required key, or its
            `group`/`name` disagree with where it is stored.
    """
    check_group(group)
    folder = Path(root) / group
    if not folder.is_dir():
        raise ResultsError(f"no results for group {group!r}: {folder} does not exist")
    out = []
    for path in sorted(folder.glob("*.json")):
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ResultsError(f"{path}: not a readable JSON file ({err})") from err
        validate_result(obj, path)
        if obj["group"] != group or obj["name"] != path.stem:
            raise ResultsError(
                f"{path}: says group={obj['group']!r} name={obj['name']!r}, but is stored as {group}/{path.stem}"
            )
        out.append(obj)
    return sorted(out, key=lambda r: r["name"])


# ---- tables rendered from result files ------------------------------------------------------------------------


@dataclass(frozen=True)
class Table:
    """A rendered table: markdown, plus an optional caption line (rendered below it, in italics)."""

    markdown: str
    caption: str | None = None

    def text(self) -> str:
        return self.markdown.rstrip("\n") + (f"\n\n*{self.caption}*" if self.caption else "")


TableFn = Callable[[Path], Table]
TABLES: dict[str, TableFn] = {}


def register_table(name: str) -> Callable[[TableFn], TableFn]:
    """Decorator: register `fn(results_root) -> Table` under `name` (the NAME of `<!-- table:NAME -->`)."""
    _check_segment(name, "table name")

    def deco(fn: TableFn) -> TableFn:
        if name in TABLES and TABLES[name] is not fn:
            raise ValueError(f"table {name!r} is already registered by {TABLES[name].__module__}")
        TABLES[name] = fn
        return fn

    return deco


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain markdown table; cells are str()-ed (format numbers before passing them)."""
    lines = ["| " + " | ".join(str(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"row {row!r} has {len(row)} cells, header has {len(header)}")
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines)


def provenance(results: Sequence[Mapping[str, Any]], groups: Sequence[str] | None = None) -> str:
    """A caption line: where the numbers come from (files, seeds, commits, total wall time)."""
    if not results:
        return "no result files"
    groups = groups or sorted({r["group"] for r in results})
    commits = sorted({str(r["commit"])[:7] + ("+dirty" if r["dirty"] is True else "") for r in results})
    seeds = sorted({r["seed"] for r in results if r["seed"] is not None})
    seed_text = f"seeds {seeds[0]}–{seeds[-1]}" if len(seeds) > 1 else f"seed {seeds[0]}" if seeds else "no seed"
    wall = sum(float(r["wall_s"]) for r in results)
    where = ", ".join(f"results/{g}/" for g in groups)
    return (
        f"Rendered from {len(results)} result file{'s' if len(results) != 1 else ''} in {where} ({seed_text}; "
        f"commit {', '.join(commits)}; "
        f"{wall / 60:.1f} min of runs in total)."
    )
