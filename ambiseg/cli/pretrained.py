"""`ambiseg pretrained`: the published runs available offline, one run's model card, its export."""

from __future__ import annotations

from pathlib import Path

import click

from .app import cli, console
from .options import OutPath

__all__ = ["pretrained_cmd"]


@cli.command("pretrained")
@click.argument("method", required=False)
@click.option("--protocol", default="lidc-v1", show_default=True, help="protocol of the published run")
@click.option("--seed", type=int, default=0, show_default=True, help="training seed of the published run")
@click.option(
    "--export",
    type=OutPath(file_okay=False, path_type=Path),
    default=None,
    help="copy the run (checkpoint, record, model card) into EXPORT/<protocol>/<method>-seed<k>/",
)
def pretrained_cmd(method: str | None, protocol: str, seed: int, export: Path | None) -> None:
    """Without METHOD: list the published runs found offline. With METHOD: print the run's
    checkpoint (for `ambiseg eval` / `sample` / `show --checkpoint`) and its model card.

    Nothing is downloaded; see `ambiseg.pretrained` for where weights are looked up.
    """
    from ..pretrained import export_pretrained, find_pretrained, list_pretrained, weight_roots

    if method is None:
        runs = list_pretrained()
        if not runs:
            roots = ", ".join(map(str, weight_roots()))
            console.print(f"no published runs found offline (searched {roots})")
            return
        for run in sorted(runs, key=lambda r: (r.protocol, r.method, r.seed)):
            console.print(f"{run.method:<14} {run.protocol:<8} seed {run.seed}  {run.checkpoint}", highlight=False)
        return
    run = find_pretrained(method, protocol=protocol, seed=seed)
    if export is not None:
        console.print(f"exported to {export_pretrained(run, export)}", highlight=False)
        return
    console.print(f"checkpoint: {run.checkpoint}\n", highlight=False)
    console.print(run.card, markup=False, highlight=False)
