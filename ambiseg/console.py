"""Rich consoles that print tables whole when the output is a file or a pipe.

Rich lays a table out to the console's width and, on a pipe, takes that width from `COLUMNS`,
another stream's terminal or 80 columns, then shortens every cell that does not fit (`0.…`). A
log has no width to respect, so there the console is as wide as any table ambiseg prints.
"""

from __future__ import annotations

import sys

from rich.console import Console

__all__ = ["make_console", "FILE_WIDTH"]

FILE_WIDTH = 10_000  # columns of a console writing to a file or pipe: tables are laid out at their own width


def make_console(*, stderr: bool = False) -> Console:
    """A Console on stdout (or stderr) that wraps to the terminal, or never cuts a table off one."""
    stream = sys.stderr if stderr else sys.stdout
    terminal = stream is not None and stream.isatty()
    return Console(stderr=stderr, width=None if terminal else FILE_WIDTH)
