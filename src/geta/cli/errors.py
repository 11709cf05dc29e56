"""`CliError`: bad command-line input (printed as one sentence, exit status 2, no traceback)."""

from __future__ import annotations

from geta.errors import GetaError

__all__ = ["CliError", "EXIT_USAGE", "EXIT_INTERRUPTED", "EXIT_BROKEN_PIPE"]

EXIT_USAGE = 2  # bad input: the message names the problem and the fix
EXIT_INTERRUPTED = 130  # Ctrl-C: a resumable checkpoint was left behind
EXIT_BROKEN_PIPE = 141  # the reader of stdout went away (128 + SIGPIPE, as a shell reports it)


class CliError(GetaError):
    """A command-line argument, file or directory cannot be used as given."""
