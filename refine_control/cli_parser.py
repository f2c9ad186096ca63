"""The one argparse style of every console script (tests/test_cli_style.py holds each of them to it).

- what a command writes is `-o/--output`; a run dir is the positional `RUN`, a model dir `MODEL`;
- `-v/--verbose` is debug logging and `-q/--quiet` warnings and errors only, everywhere;
- every option has help, and its default is shown one way: `Default: X` at the end;
- `--version` everywhere; user mistakes end as `error:` / `hint:` lines with exit code 2 (cli_utils.run_cli).
"""

import argparse
from typing import Any, NoReturn

from refine_control import __version__

VERBOSE_HELP = "debug logging"
QUIET_HELP = "warnings and errors only"


class Parser(argparse.ArgumentParser):
    """A usage mistake reads like every other user mistake: `error:` and `hint:` lines, exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message}\nhint: see `{self.prog} --help`\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Appends `Default: X` to an option's help when argparse holds a default the help does not state already."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "Default:" in text
            or not action.option_strings
            or default is None
            or default is argparse.SUPPRESS
            or isinstance(default, bool)
            or isinstance(action, argparse._CountAction)
            or default == []
        ):
            return text
        return f"{text.rstrip('.')}. Default: %(default)s"


def new_parser(prog: str, description: str, epilog: str | None = None, **kwargs: Any) -> argparse.ArgumentParser:
    """A parser with the shared formatter and `--version`."""
    parser = Parser(prog=prog, description=description, epilog=epilog, formatter_class=HelpFormatter, **kwargs)
    add_version(parser)
    return parser


def add_version(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action="version", version=f"{parser.prog} {__version__}")


def add_output(parser: argparse.ArgumentParser, help: str, *aliases: str, dest: str = "output", **kwargs: Any) -> None:
    """`-o/--output` (older spellings such as `--output-dir` kept as aliases)."""
    parser.add_argument("-o", "--output", *aliases, dest=dest, help=help, **kwargs)


def add_verbosity(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    group.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)


def verbosity(args: argparse.Namespace) -> int:
    """-1 (quiet), 0 or 1 (verbose), as `cli_utils.setup_logging` takes it."""
    return 1 if args.verbose else -1 if args.quiet else 0
