"""`ambiseg show`: a figure of one dataset item (image, annotations, true modes when known)."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import ConfigError
from ..files import check_target, suffix_kind
from .app import cli, console, read_inputs
from .checkpoints import check_fits, draw_samples, load_run
from .options import MAX_SAMPLES, OutPath, parse_sets, seed_option, threads_option

__all__ = ["show_cmd"]


@cli.command("show")
@click.option("--data", "data", default="synthetic", show_default=True, help="dataset name (see `ambiseg list`)")
@click.option(
    "--root", type=click.Path(path_type=Path), default=None, help="dataset files (lidc: zip, folder or pickles)"
)
@click.option("--split", default="train", show_default=True, help="train, val, test or all")
@click.option("--index", type=int, required=True, help="item index within the split")
@click.option(
    "--out", type=OutPath(dir_okay=False, path_type=Path), required=True, help="figure file (.png, .pdf, .svg)"
)
@click.option(
    "--set",
    "options",
    multiple=True,
    metavar="KEY=VALUE",
    help="dataset option, e.g. --set data.seed=1 (the data. prefix is optional; repeatable)",
)
@click.option(
    "--checkpoint",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="also draw samples of the method trained in this checkpoint",
)
@click.option(
    "--samples",
    "num",
    type=click.IntRange(min=1, max=MAX_SAMPLES),
    default=8,
    show_default=True,
    help="number of samples drawn with --checkpoint",
)
@seed_option("seed of the sample generator")
@threads_option
def show_cmd(
    data: str,
    root: Path | None,
    split: str,
    index: int,
    out: Path,
    options: tuple[str, ...],
    checkpoint: Path | None,
    num: int,
    seed: int,
) -> None:
    """Draw item INDEX of a dataset split: the image, every annotator's mask, for synthetic
    data the true modes with their probabilities, and with --checkpoint the method's samples."""
    from ..data import build, figure_for_item, save_figure

    if checkpoint is not None:
        from ..pretrained import resolve_checkpoint

        checkpoint = resolve_checkpoint(checkpoint)
    read_inputs(checkpoint, root)
    check_target(out, kind=suffix_kind(out))  # before the work
    settings = {key.removeprefix("data."): value for key, value in parse_sets(options).items()}
    method = load_run(checkpoint, ())[0] if checkpoint is not None else None
    dataset = build(data, root=root, split=split, **settings)
    if not 0 <= index < len(dataset):
        raise ConfigError(
            f"--index {index} is out of range: the {split} split has {len(dataset)} items (0..{len(dataset) - 1})"
        )
    item = dataset[index]
    title = f"{data} {split} #{index}: {item['id']}"
    samples = None
    if method is not None and checkpoint is not None:
        what = f"{data} {split} #{index}"
        check_fits(method, dataset, checkpoint, what, fix="pass the --data/--root/--set the run was trained on")
        samples = draw_samples(method, item["image"][None], num, seed=seed, path=checkpoint, what=what)[0]
        title = f"{method.name} on {title}"
    path = save_figure(figure_for_item(item, samples=samples, title=title), out)
    console.print(f"wrote {path}")
