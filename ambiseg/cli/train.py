"""`ambiseg train`: train one method into an output directory (resumable)."""
from __future__ import annotations

from pathlib import Path

import click

from ..bench import build_for_data, pick_device
from ..data.spec import DataSpec
from ..distributed import distributed_run, is_main
from ..io import ensure_dir, write_json
from ..presets import bench_preset
from .app import cli, console
from .options import common_set_option, data_options, parse_sets, split_sets


@cli.command("train")
@click.argument("method")
@data_options
@common_set_option
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="run directory")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default=None, help="cpu, cuda, cuda:N (default: CUDA when present)")
@click.option("--resume", is_flag=True, help="continue from OUT/last.safetensors")
@click.option("--detect-anomaly", is_flag=True, help="torch autograd anomaly detection (slow; for debugging)")
@click.option("--save-every", type=click.IntRange(min=1), default=50, show_default=True,
              help="checkpoint every N optimiser steps (and at every epoch end)")
@click.option("--no-progress", is_flag=True, help="no progress bars")
@click.option("--log", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="learning curves: validation history as CSV (default: OUT/history.csv)")
def train_cmd(method: str, data_name: str, root: str | None, preset: str, sets: tuple[str, ...], out: Path,
              seed: int, device: str | None, resume: bool, detect_anomaly: bool, save_every: int,
              no_progress: bool, log: Path | None) -> None:
    """Train METHOD (a registered recipe) on a dataset; checkpoints go to OUT."""
    from ..train import Trainer, seed_everything

    overrides, data_settings = split_sets(parse_sets(sets))
    spec = DataSpec(name=data_name, root=root, preset=preset).with_settings(data_settings)
    dev = pick_device(device)
    with distributed_run(dev, console) as dev:
        ensure_dir(out)
        sel = spec.build_splits()
        seed_everything(seed)
        model = build_for_data(method, sel["train"], preset=bench_preset(preset).method_presets_for(data_name),
                               overrides=overrides)
        trainer = Trainer(model, sel["train"], sel["val"], out_dir=out, seed=seed, device=dev,
                          progress=not no_progress, detect_anomaly=detect_anomaly, save_every=save_every,
                          console=console, data=spec.to_dict(), log=log or out / "history.csv")
        if is_main():
            write_json(out / "config.json", {"config": model.config, "data": spec.to_dict(), "seed": seed,
                                             "overrides": overrides, "data_settings": data_settings})
        result = trainer.fit(resume=resume)
    console.print(f"trained {model.name} in {result.seconds:.1f} s; steps {result.steps}; best {result.best}; "
                  f"checkpoint {out / 'last.safetensors'}")
