"""Errors of the user's input, and how every command line reports them.

An [`InputError`] says what came, what was expected and the fix (a misspelt model folder, a
missing checkpoint file). Library calls raise it like any exception; a command line's `main`,
wrapped in [`command_line`], prints its message alone and exits with status 2, as argparse does
for a bad flag: a traceback above such a message reads as a crash and buries the fix.
"""

from __future__ import annotations

import functools
import os
import sys

# Set to 1 to see the traceback of an input error in a command line (for a bug report).
TRACEBACK_VARIABLE = "LATENTCODE_TRACEBACK"
INPUT_ERROR_EXIT_STATUS = 2  # argparse's status for a usage error


class InputError(Exception):
    """Mixed into the errors whose message is all a user of a command line needs: the input was
    wrong, and the message names it and the fix. Subclasses keep a built-in base (`OSError`,
    `ValueError`) so that `except OSError` still catches them."""


class PretrainedNotFoundError(InputError, OSError):
    """No folder of that name, and no Hub repo to load instead (see `latentcode.hub.resolve_pretrained`)."""


def command_line(main):
    """Decorator of a command line's `main(...)`: an [`InputError`] raised inside is printed as
    `PROG: error: MESSAGE` on stderr and ends the program with `SystemExit(2)`, without a
    traceback (unless the environment sets `LATENTCODE_TRACEBACK=1`). Other exceptions, which
    are bugs, keep their traceback."""

    @functools.wraps(main)
    def run(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except InputError as error:
            if os.environ.get(TRACEBACK_VARIABLE, "") not in ("", "0"):
                raise
            program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "latentcode"
            if program == "__main__.py":  # `python -m PACKAGE`: name the package, as its user typed it
                program = os.path.basename(os.path.dirname(sys.argv[0]))
            print(f"{program}: error: {error}", file=sys.stderr)
            raise SystemExit(INPUT_ERROR_EXIT_STATUS) from None

    return run
