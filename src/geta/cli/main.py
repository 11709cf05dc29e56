"""The ``geta`` console script: argument parsing, dispatch and error reporting.

Bad input (a `geta.GetaError`, which includes every `CliError` and `RecipeError`) is printed as
one sentence on stderr with exit status 2 and no traceback; a bug still shows its traceback.
A reader that closes the pipe early (``geta report DIR --json | head``) ends the command
quietly with exit status 141, like a program killed by SIGPIPE.

>>> main(["env", "--json"]) == 0  # doctest: +SKIP
True
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence

from geta.cli.errors import EXIT_BROKEN_PIPE, EXIT_USAGE
from geta.errors import GetaError

__all__ = ["build_parser", "main", "one_line"]

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # colours and cursor moves in messages from torch


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``geta`` with one sub-parser per subcommand module."""
    from geta.cli import compress, env, export, inspect, report

    parser = argparse.ArgumentParser(
        prog="geta",
        description="Joint structured pruning and mixed-precision quantization-aware training (GETA).",
    )
    parser.add_argument("--version", action="version", version=f"geta {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (compress, inspect, report, export, env):
        module.add_parser(sub)
    return parser


def _version() -> str:
    import geta

    return geta.__version__


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``geta`` with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed the usage error (or --help/--version)
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.func(args))
    except GetaError as exc:
        print(f"geta {args.command}: error: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # the reader went away (`geta report DIR --json | head`): not an error
        _silence_stdout()
        return EXIT_BROKEN_PIPE


def one_line(text: str) -> str:
    """``text`` without terminal escape sequences, its lines joined: one clean sentence."""
    text = _ANSI.sub("", text)
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the flush at exit does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real file descriptor (e.g. captured output)
        pass


if __name__ == "__main__":
    sys.exit(main())
