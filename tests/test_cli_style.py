"""Every console script follows one style (refine_control/cli_parser.py): walked from pyproject's [project.scripts]."""

import argparse
import importlib
import re
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
COMMANDS = {
    **SCRIPTS,
    "python -m refine_control.runtime": "refine_control.runtime.__main__:main",
    "python -m refine_control.export.web": "refine_control.export.web:main",
}
# What each command writes (None: it writes nothing, e.g. a server); the positional names of the same things.
WRITES = {"refine-serve": False}
POSITIONALS = {"run": "RUN", "target": "RUN", "model_dir": "MODEL", "model": "MODEL", "command": "COMMAND"}


def _parsers(name: str) -> list[tuple[str, argparse.ArgumentParser]]:
    module = importlib.import_module(COMMANDS[name].split(":")[0])
    parser = module.build_parser()
    found = [(name, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found += [(f"{name} {sub}", p) for sub, p in action.choices.items()]
    return found


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_console_script_follows_the_shared_style(name: str):
    parsers = _parsers(name)
    top = parsers[0][1]
    assert any(isinstance(a, argparse._VersionAction) for a in top._actions), f"{name}: no --version"
    for where, parser in parsers:
        leaves = parser is not top or len(parsers) == 1
        options = {s: a for a in _options(parser) for s in a.option_strings}
        if leaves:
            # -v/-q: the same two flags with the same meaning everywhere.
            assert options["-v"] is options["--verbose"] and options["-q"] is options["--quiet"], where
            assert options["-v"].help == "debug logging" and options["-q"].help == "warnings and errors only", where
            # What a command writes is -o/--output.
            if WRITES.get(name, True):
                assert "-o" in options and options["-o"] is options["--output"], f"{where}: no -o/--output"
        for action in _options(parser):
            label = f"{where} {action.option_strings or action.dest}"
            if not action.option_strings:
                assert action.metavar == POSITIONALS[action.dest], f"{label}: positional named {action.metavar}"
                continue
            if isinstance(action, argparse._VersionAction):
                continue
            assert action.help, f"{label}: no help"
            assert not re.search(r"(?<!%)\(default|\(\d+\)$", action.help, re.IGNORECASE), f"{label}: {action.help!r}"
            rendered = parser.formatter_class(parser.prog)._expand_help(action)
            has_default = action.default is not None and not isinstance(action.default, bool) and action.default != []
            if has_default and not isinstance(action, argparse._CountAction):
                assert re.search(r"Default: \S", rendered), f"{label}: the default {action.default!r} is not shown"
            if "Default:" in rendered:
                assert rendered.count("Default:") == 1 and not rendered.rstrip(".").endswith("Default:"), label


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_a_usage_mistake_is_an_error_and_a_hint_with_exit_code_2(name: str, capsys: pytest.CaptureFixture):
    module = importlib.import_module(COMMANDS[name].split(":")[0])
    with pytest.raises(SystemExit) as exited:
        module.build_parser().parse_args(["--no-such-flag"])
    assert exited.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("error: ")
    assert lines[1].startswith("hint: ") and "--help" in lines[1]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_version_names_the_command(name: str, capsys: pytest.CaptureFixture):
    from refine_control import __version__

    module = importlib.import_module(COMMANDS[name].split(":")[0])
    with pytest.raises(SystemExit) as exited:
        module.build_parser().parse_args(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out.strip().endswith(__version__)
