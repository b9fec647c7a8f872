"""The `ambiseg` command line (click + rich).

Every user error ends as one line on stderr and exit code 2; no traceback.
"""

from __future__ import annotations

import sys
import warnings
from typing import TextIO

import click

from ..errors import AmbisegError, PluginWarning
from . import (  # each module registers its commands
    bench,
    checkpoints,
    pretrained,
    show,
    train,
)
from .app import cli

__all__ = ["main", "cli", "one_line"]


def one_line(text: str) -> str:
    """`text` with line breaks and other control characters escaped, so an error stays one line
    (file names may hold a newline)."""
    return "".join(repr(c)[1:-1] if not c.isprintable() and c != " " else c for c in text)


def out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` says an allocation failed (Python's MemoryError, or torch's on CPU or CUDA)."""
    torch = sys.modules.get("torch")  # not imported: the error cannot be torch's (and importing it takes seconds)
    if torch is not None and isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, MemoryError) or "can't allocate memory" in str(exc)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run `cli`, turning user errors into one line and exit code 2 and a
    `PluginWarning` into one line `warning: ...`."""
    with warnings.catch_warnings():  # gives an in-process caller its own warning display back
        python_shows = warnings.showwarning

        def show(
            message: Warning | str,
            category: type[Warning],
            filename: str,
            lineno: int,
            file: TextIO | None = None,
            line: str | None = None,
        ) -> None:
            if issubclass(category, PluginWarning):
                click.echo(f"warning: {one_line(str(message))}", err=True)
            else:
                python_shows(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        _main(argv)


def _main(argv: list[str] | None) -> None:
    """`main` without the warning display."""
    try:
        cli.main(args=argv, prog_name="ambiseg", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        click.echo(f"error: {one_line(exc.format_message())}", err=True)
        sys.exit(2)
    except AmbisegError as exc:
        click.echo(f"error: {one_line(str(exc))}", err=True)
        sys.exit(2)
    except (MemoryError, RuntimeError) as exc:  # a size the machine cannot hold: refused, not a crash
        if not out_of_memory(exc):
            raise
        detail = f" ({one_line(str(exc).split('. Error code')[0])})" if str(exc) else ""
        click.echo(
            f"error: out of memory{detail}; use smaller images (data.size, data.crop), fewer "
            "--samples or a smaller --max-batch",
            err=True,
        )
        sys.exit(2)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as exc:
        click.echo(f"error: {one_line(f'{exc.strerror or exc}: {exc.filename}')}", err=True)
        sys.exit(2)
    except OSError as exc:  # the file system refused (full disk, read-only, I/O error): not a bug of ours
        where = f": {exc.filename}" if exc.filename else ""
        click.echo(f"error: {one_line(f'{exc.strerror or exc}{where}')}", err=True)
        sys.exit(2)
    sys.exit(0)
