"""The click group and the `list` command; other commands register on `cli` from their modules."""

from __future__ import annotations

import os
import sys

import click
from rich.table import Table

from .._version import __version__
from ..console import make_console
from ..files import reading

__all__ = ["cli", "console", "read_inputs"]

console = make_console()  # off a terminal, wide enough for any leaderboard (rich would cut it to 80 columns)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="ambiseg")
def cli() -> None:
    """ambiseg: ambiguous medical image segmentation (ATFM and baselines)."""
    # a name the terminal's encoding lacks (LC_ALL=C) is printed escaped, never a UnicodeEncodeError
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(errors="backslashreplace")


@cli.command("list")
def list_cmd() -> None:
    """Show every registry and the names registered in it."""
    from ..catalog import component_names  # without a plug-in, read from the sources: no torch

    table = Table(title="ambiseg components")
    table.add_column("registry", style="bold")
    table.add_column("names")
    for kind, names in component_names().items():
        shown = [name + (f" ({', '.join(aliases)})" if aliases else "") for name, aliases in names.items()]
        table.add_row(kind, ", ".join(shown) or "-")
    console.print(table)


def read_inputs(*paths: str | os.PathLike | None) -> None:
    """Mark `paths` as inputs of the running command until it ends: no output of it replaces them
    (`ambiseg.files.check_target`)."""
    click.get_current_context().with_resource(reading(*paths))
