"""The click group and the `list` command; other commands register on `cli` from their modules."""

from __future__ import annotations

import sys

import click
from rich.console import Console
from rich.table import Table

from .. import __version__

__all__ = ["cli", "console"]

# wide enough for the leaderboard when the output is a file or a pipe (rich would use 80)
console = Console(width=None if sys.stdout.isatty() else 200)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="ambiseg")
def cli() -> None:
    """ambiseg: ambiguous medical image segmentation (ATFM and baselines)."""


@cli.command("list")
def list_cmd() -> None:
    """Show every registry and the names registered in it."""
    from ..method import list_components
    from ..registry import REGISTRIES

    table = Table(title="ambiseg components")
    table.add_column("registry", style="bold")
    table.add_column("names")
    for kind, names in list_components().items():
        registry = REGISTRIES[kind]
        shown = [n + (f" ({', '.join(registry.aliases(n))})" if registry.aliases(n) else "") for n in names]
        table.add_row(kind, ", ".join(shown) or "-")
    console.print(table)
