"""Every command shown in README.md and docs/*.md parses as written: each flag of a project command exists in
that command's parser, and its choices accept the value shown (cheap: no command runs)."""

import argparse
import importlib
import re
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# How each command shown in the docs builds its parser.
PARSERS = {
    "refine-distill": "refine_control.cli",
    "refine-eval": "refine_control.evaluation.cli",
    "refine-export": "refine_control.export.cli",
    "refine-serve": "refine_control.serve.cli",
    "refine-teacher": "refine_control.builtin.cli",
    "refine-weaklabel": "refine_control.weaklabel.cli",
    "python -m refine_control.runtime": "refine_control.runtime.__main__",
    "python -m refine_control.demo": "refine_control.demo",
    "python benchmarks/latency.py": "benchmarks.latency.cli",
    "python benchmarks/load.py": "benchmarks.load",
    "python benchmarks/own_data_example.py": "benchmarks.own_data_example",
}


def _doc_commands() -> list[tuple[str, str]]:
    """(where, command line) for each line of a fenced bash block that starts with a known command."""
    found = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = doc.read_text()
        for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
            joined = block.replace("\\\n", " ")
            for line in joined.splitlines():
                line = line.split(" #", 1)[0].strip()
                if any(line.startswith(name) for name in PARSERS):
                    found.append((doc.name, line))
    return found


def _parser(command: str) -> tuple[argparse.ArgumentParser, list[str]]:
    name = max((n for n in PARSERS if command.startswith(n)), key=len)
    module = importlib.import_module(PARSERS[name])
    return module.build_parser(), shlex.split(command[len(name) :])


def _check(parser: argparse.ArgumentParser, args: list[str]) -> list[str]:
    """Flags that the parser does not know, and values outside a flag's choices."""
    problems = []
    actions = parser._option_string_actions  # argparse's own table of option strings
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for i, token in enumerate(args):
        if token == "...":
            break
        if subparsers and token in subparsers[0].choices:
            return problems + _check(subparsers[0].choices[token], args[i + 1 :])
        if not token.startswith("-") or token in ("-", "--"):
            continue
        flag, _, inline = token.partition("=")
        action = actions.get(flag)
        if action is None:
            problems.append(f"unknown flag {flag}")
            continue
        value = inline or (args[i + 1] if i + 1 < len(args) else None)
        shown = value is not None and not value.startswith(("-", "$", "<"))
        if action.choices is not None and action.nargs in (None, "?") and shown and value not in action.choices:
            problems.append(f"{flag} {value}: not one of {sorted(action.choices)}")
    return problems


COMMANDS = _doc_commands()


def test_the_docs_show_commands_of_every_kind():
    shown = {max((n for n in PARSERS if c.startswith(n)), key=len) for _, c in COMMANDS}
    assert {"refine-distill", "refine-eval", "refine-export", "refine-serve"} <= shown


@pytest.mark.parametrize(("doc", "command"), COMMANDS, ids=[f"{d}:{c[:60]}" for d, c in COMMANDS])
def test_each_documented_command_parses(doc, command):
    parser, args = _parser(command)
    assert _check(parser, args) == [], f"{doc}: {command}"


def test_the_check_catches_an_unknown_flag_and_a_bad_choice():
    parser, args = _parser("refine-distill --teacher builtin --no-such-flag 1 --recipe fastest -o runs/x")
    assert _check(parser, args) == ["unknown flag --no-such-flag", "--recipe fastest: not one of ['fast', 'guided']"]
