#!/usr/bin/env python
"""Render the tables of README.md and docs/*.md from the result files committed under results/.

    python benchmarks/tables.py           # rewrite every marked block with what the result files produce
    python benchmarks/tables.py --check   # change nothing; exit 1 and name every block that differs

A block is the text between `<!-- table:NAME -->` and `<!-- /table:NAME -->` (each marker on its own line).
NAME is a table registered with `refine_control.results.register_table`; the modules that register tables are
listed in TABLE_MODULES below (add yours there, or pass `--module` for a one-off). A block whose NAME is not
registered, or whose table cannot be rendered (a result file missing or malformed), is an error in both modes.
Exit codes: 0 up to date / rewritten, 1 a block differs or cannot be rendered, 2 bad arguments.
"""

import argparse
import importlib
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a checkout without installing
    sys.path.insert(0, str(REPO))

from refine_control.atomic import write_text  # noqa: E402
from refine_control.cli_utils import run_cli  # noqa: E402
from refine_control.errors import ConfigError, RefineError  # noqa: E402
from refine_control.results import TABLES  # noqa: E402

# Modules whose import registers tables (one line per owner of a results group).
TABLE_MODULES: tuple[str, ...] = (
    "refine_control.evaluation.tables",
    "refine_control.evaluation.latency_tables",
    "refine_control.evaluation.device_tables",
    "refine_control.evaluation.web_tables",
    "refine_control.evaluation.sd15_tables",
    "refine_control.weaklabel.tables",
)

_OPEN = re.compile(r"^<!-- table:([^ ]+) -->[ \t]*$", re.MULTILINE)
_CLOSE = re.compile(r"^<!-- /table:([^ ]+) -->[ \t]*$", re.MULTILINE)


@dataclass(frozen=True)
class Block:
    name: str
    start: int  # first character after the opening marker's line
    end: int  # first character of the closing marker


def find_blocks(text: str, where: str = "<text>") -> list[Block]:
    """The marked blocks of `text`, in order; raises ConfigError on an unclosed, stray or nested marker."""
    opens = [(m.start(), m.end(), m.group(1), True) for m in _OPEN.finditer(text)]
    closes = [(m.start(), m.end(), m.group(1), False) for m in _CLOSE.finditer(text)]
    blocks, current = [], None
    for start, end, name, is_open in sorted(opens + closes):
        line = text.count("\n", 0, start) + 1
        if is_open:
            if current is not None:
                raise ConfigError(f"{where}:{line}: table {name!r} opens inside table {current[0]!r}")
            current = (name, end + 1 if text[end : end + 1] == "\n" else end)
        else:
            if current is None or current[0] != name:
                raise ConfigError(f"{where}:{line}: closing marker for {name!r} without its opening marker")
            blocks.append(Block(name, current[1], start))
            current = None
    if current is not None:
        raise ConfigError(f"{where}: table {current[0]!r} is never closed (<!-- /table:{current[0]} -->)")
    return blocks


def render(name: str, results_root: Path) -> str:
    """The text a block named `name` must hold (its table plus caption, newline-terminated)."""
    if name not in TABLES:
        raise KeyError(name)
    return TABLES[name](results_root).text() + "\n"


def update_text(text: str, results_root: Path, where: str) -> tuple[str, list[str], list[str]]:
    """(new text, names of blocks that changed, problems) for one document."""
    out, pos, changed, problems = [], 0, [], []
    for block in find_blocks(text, where):
        out.append(text[pos : block.start])
        old = text[block.start : block.end]
        if block.name not in TABLES:
            problems.append(
                f"{where}: unknown table {block.name!r} (registered: {', '.join(sorted(TABLES)) or 'none'})"
            )
            new = old
        else:
            try:
                new = render(block.name, results_root)
            except RefineError as err:
                problems.append(f"{where}: table {block.name!r} cannot be rendered: {err}")
                new = old
        if new != old:
            changed.append(block.name)
        out.append(new)
        pos = block.end
    out.append(text[pos:])
    return "".join(out), changed, problems


def documents(repo: Path) -> list[Path]:
    """README.md and docs/*.md of `repo` (those that exist)."""
    docs = [repo / "README.md", *sorted((repo / "docs").glob("*.md"))]
    return [p for p in docs if p.is_file()]


def load_table_modules(modules: Sequence[str]) -> None:
    for mod in modules:
        try:
            importlib.import_module(mod)
        except ImportError as err:
            raise ConfigError(f"cannot import table module {mod!r}: {err}") from err


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message} (see `{self.prog} --help`)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(prog="benchmarks/tables.py", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if any block differs")
    parser.add_argument("--repo", type=Path, default=REPO, help="repository root holding README.md and docs/")
    parser.add_argument("--results", type=Path, help="results root (default: REPO/results)")
    parser.add_argument("--module", action="append", default=[], help="extra module that registers tables")

    def body() -> int:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help
            return int(exc.code or 0)
        if not args.repo.is_dir():
            raise ConfigError(f"--repo {args.repo} is not a directory")
        results_root = args.results or args.repo / "results"
        load_table_modules([*TABLE_MODULES, *args.module])
        updates, stale, problems = [], [], []
        for doc in documents(args.repo):
            text = doc.read_text(encoding="utf-8")
            rel = doc.relative_to(args.repo).as_posix()
            new, changed, probs = update_text(text, results_root, rel)
            problems += probs
            stale += [f"{rel}: table {name!r} differs from what the result files produce" for name in changed]
            if new != text:
                updates.append((doc, new))
        for line in problems + (stale if args.check else []):
            print(line, file=sys.stderr)
        if problems or (args.check and stale):
            if args.check and stale:
                print("run `python benchmarks/tables.py` to re-render", file=sys.stderr)
            return 1
        if not args.check:
            for doc, new in updates:
                write_text(doc, new)
                print(f"rewrote {doc.relative_to(args.repo).as_posix()}")
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
