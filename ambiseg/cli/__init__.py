"""The `ambiseg` command line (click + rich).

Every user error ends as one line on stderr and exit code 2; no traceback.
"""

from __future__ import annotations

import sys

import click

from ..errors import AmbisegError
from . import (  # each module registers its commands
    bench,
    evaluate,
    show,
    train,
)
from .app import cli

__all__ = ["main", "cli"]


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run `cli`, turning user errors into one line and exit code 2."""
    try:
        cli.main(args=argv, prog_name="ambiseg", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(2)
    except AmbisegError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as exc:
        click.echo(f"error: {exc.strerror or exc}: {exc.filename}", err=True)
        sys.exit(2)
    except OSError as exc:  # the file system refused (full disk, read-only, I/O error): not a bug of ours
        where = f": {exc.filename}" if exc.filename else ""
        click.echo(f"error: {exc.strerror or exc}{where}", err=True)
        sys.exit(2)
    sys.exit(0)
