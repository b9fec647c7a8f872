"""`ambiseg train`: train one method into an output directory (resumable)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import click

from ..bench_presets import bench_preset
from ..errors import ConfigError
from ..files import check_target, ensure_dir, no_new_dirs_on_error, write_json
from ..lock import run_lock
from ..registry import methods
from .app import cli, console, read_inputs
from .options import OutPath, common_set_option, data_options, parse_sets, seed_option, split_sets, threads_option

RUN_FILES = ("last.safetensors", "best.safetensors", "history.csv")


def check_existing_run(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to train over a run in `out` unless told to continue it (`resume`) or replace it
    (`overwrite`, which deletes its checkpoints and history first); `resume` wins over `overwrite`."""
    held = [name for name in RUN_FILES[:2] if (out / name).exists()]
    if resume and held == ["best.safetensors"]:  # a resume would start again and replace it
        raise ConfigError(
            f"{out} holds best.safetensors but no last.safetensors, so there is no state to resume; "
            "pass --overwrite to train it again from the start, or choose another --out"
        )
    if resume or not held:
        return
    if not overwrite:
        raise ConfigError(
            f"{out} already holds a run ({held[0]}); pass --resume to continue it, --overwrite to "
            "replace it, or choose another --out"
        )
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)


@cli.command("train")
@click.argument("method")
@data_options
@common_set_option
@click.option("--out", type=OutPath(file_okay=False, path_type=Path), required=True, help="run directory")
@seed_option("seed of the initialisation and batch order")
@click.option("--device", default=None, help="cpu, cuda, cuda:N (default: CUDA when present)")
@click.option("--resume", is_flag=True, help="continue from OUT/last.safetensors")
@click.option(
    "--overwrite", is_flag=True, help="replace the run in OUT (its checkpoints and history) instead of refusing"
)
@click.option("--detect-anomaly", is_flag=True, help="torch autograd anomaly detection (slow; for debugging)")
@click.option(
    "--save-every",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    help="checkpoint every N optimiser steps (and at every epoch end)",
)
@click.option("--no-progress", is_flag=True, help="no progress bars")
@click.option(
    "--channels-last",
    is_flag=True,
    help="train the conv nets in the channels-last memory format (same math, other rounding; faster on CPUs)",
)
@click.option(
    "--log",
    type=OutPath(dir_okay=False, path_type=Path),
    default=None,
    help="learning curves: validation history as CSV (default: OUT/history.csv)",
)
@threads_option
def train_cmd(
    method: str,
    data_name: str,
    root: str | None,
    preset: str,
    sets: tuple[str, ...],
    out: Path,
    seed: int,
    device: str | None,
    resume: bool,
    overwrite: bool,
    detect_anomaly: bool,
    save_every: int,
    no_progress: bool,
    channels_last: bool,
    log: Path | None,
) -> None:
    """Train METHOD (a registered recipe) on a dataset; checkpoints go to OUT.

    OUT is locked while training; a run already in OUT is continued with --resume, replaced
    with --overwrite, and otherwise refused.
    """
    import torch

    from ..data.spec import DataSpec
    from ..distributed import distributed_run, is_main
    from ..recipes import build_for_data
    from ..runtime import pick_device, seed_everything
    from ..train import Trainer

    read_inputs(root)
    methods.canonical(method)  # a typo is refused before the data is read
    if log is not None:  # refused now, not at the first validation
        check_target(log, kind="text", option="--log")
    if resume and overwrite:
        raise ConfigError("--resume continues the run in --out and --overwrite replaces it; choose one")
    overrides, data_settings = split_sets(parse_sets(sets))
    spec = DataSpec(name=data_name, root=root, preset=preset).with_settings(data_settings)
    dev = pick_device(device)
    with distributed_run(dev, console) as dev, no_new_dirs_on_error(out):  # a refusal leaves no empty --out
        sel = spec.build_splits()
        ensure_dir(out)
        seed_everything(seed)
        model = build_for_data(
            method, sel["train"], preset=bench_preset(preset).method_presets_for(data_name), overrides=overrides
        )
        trainer = Trainer(
            model,
            sel["train"],
            sel["val"],
            out_dir=out,
            seed=seed,
            device=dev,
            progress=not no_progress,
            detect_anomaly=detect_anomaly,
            save_every=save_every,
            console=console,
            data=spec.to_dict(),
            log=log or out / "history.csv",
            channels_last=channels_last,
        )
        with run_lock(out) if is_main() else contextlib.nullcontext():
            if is_main():
                check_existing_run(out, resume=resume, overwrite=overwrite)
            if resume:
                trainer.check_resume()  # a refused resume writes nothing
            if is_main():
                write_json(
                    out / "config.json",
                    {
                        "config": model.config,
                        "data": spec.to_dict(),
                        "seed": seed,
                        "overrides": overrides,
                        "data_settings": data_settings,
                        **({"channels_last": True} if channels_last else {}),  # the default leaves the file as before
                    },
                )
                console.print(
                    f"[bold]{model.name}[/bold] on {data_name} (preset {preset}, seed {seed}, "
                    f"{model.num_parameters():,} parameters, device {dev}, threads {torch.get_num_threads()})"
                )
            result = trainer.fit(resume=resume)
    console.print(
        f"trained {model.name} in {result.seconds:.1f} s; steps {result.steps}; best {result.best}; "
        f"checkpoint {out / 'last.safetensors'}"
    )
