"""`ambiseg bench` and `ambiseg leaderboard`."""

from __future__ import annotations

from pathlib import Path

import click
from click.core import ParameterSource

from ..errors import ConfigError
from ..files import no_new_dirs_on_error
from ..inference import InferenceOptions
from ..protocols import get_protocol
from .app import cli, console, read_inputs
from .options import (
    OutPath,
    check_seed,
    common_set_option,
    data_options,
    inference_options,
    parse_counts,
    parse_ints,
    parse_sets,
    split_sets,
    threads_option,
)


@cli.command("bench")
@click.option("--methods", required=True, help="comma-separated registered methods, e.g. atfm,phiseg,probunet")
@data_options
@common_set_option
@click.option("--device", default=None, help="cpu, cuda, cuda:N (default: CUDA when present)")
@click.option("--seeds", default="0", show_default=True, help="comma-separated seeds")
@click.option("--samples", "samples", default="16,32,100", show_default=True, help="sample counts to evaluate")
@click.option("--out", type=OutPath(file_okay=False, path_type=Path), default=Path("runs/bench"), show_default=True)
@inference_options
@click.option("--no-baseline", is_flag=True, help="leave out the deterministic U-Net reference row")
@click.option("--retrain", is_flag=True, help="train again even when OUT holds a finished run")
@click.option("--no-progress", is_flag=True, help="no progress bars")
@click.option(
    "--protocol",
    default=None,
    help="a named evaluation protocol (e.g. lidc-v1: split, test slices, sample counts; sets --data)",
)
@threads_option
def bench_cmd(
    methods: str,
    data_name: str,
    root: str | None,
    preset: str,
    sets: tuple[str, ...],
    device: str | None,
    seeds: str,
    samples: str,
    out: Path,
    inference: InferenceOptions,
    no_baseline: bool,
    retrain: bool,
    no_progress: bool,
    protocol: str | None,
) -> None:
    """Train, sample, evaluate and time METHODS on one dataset; print and write the leaderboard.

    A bench stopped part-way continues where it stopped: finished evaluations (same method
    config, data, seed, counts, protocol) are kept, finished trainings loaded, interrupted ones
    resumed."""
    from ..bench import BenchSpec, run_bench
    from ..distributed import distributed_run
    from ..registry import methods as registry
    from ..runtime import pick_device

    read_inputs(root)
    names = [m.strip() for m in methods.split(",") if m.strip()]
    for seed in parse_ints(seeds, "--seeds"):
        check_seed(seed, "--seeds")

    names = [registry.canonical(n) for n in names]  # unknown names fail before any work
    twice = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if twice is not None:  # it would be evaluated twice and counted as two seeds
        raise ConfigError(f"--methods names '{twice}' twice (aliases included) in '{methods}'; give each method once")
    overrides, data_settings = split_sets(parse_sets(sets))
    if protocol is not None:
        chosen = get_protocol(protocol)  # an unknown name fails here, before any work
        context = click.get_current_context()
        if context.get_parameter_source("data_name") is ParameterSource.DEFAULT:
            data_name = chosen.dataset
        if context.get_parameter_source("preset") is ParameterSource.DEFAULT:
            preset = chosen.preset
    with distributed_run(pick_device(device), console) as dev, no_new_dirs_on_error(out):  # a refusal leaves none
        spec = BenchSpec(
            methods=names,
            data=data_name,
            root=root,
            preset=preset,
            device=str(dev),
            seeds=parse_ints(seeds, "--seeds"),
            counts=parse_counts(samples),
            out=out,
            overrides=overrides,
            data_settings=data_settings,
            baseline=not no_baseline,
            retrain=retrain,
            progress=not no_progress,
            inference=inference,
            protocol=protocol,
        )
        run_bench(spec, console=console)


@cli.command("leaderboard")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--out",
    type=OutPath(file_okay=False, path_type=Path),
    default=None,
    help="where leaderboard.{md,csv,tex,png} go (default: the first input directory)",
)
def leaderboard_cmd(inputs: tuple[Path, ...], out: Path | None) -> None:
    """Merge bench records from INPUTS (directories or record files) into one leaderboard."""
    from ..leaderboard import to_rich, write_leaderboard

    read_inputs(*inputs)
    target = out or (inputs[0] if inputs[0].is_dir() else inputs[0].parent)
    rows, paths = write_leaderboard(list(inputs), target)
    for table in to_rich(rows):
        console.print(table)
    console.print(f"written: {', '.join(str(p) for p in paths.values())}")
