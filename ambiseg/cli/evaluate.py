"""`ambiseg sample` and `ambiseg eval`: use a trained checkpoint."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import click
import numpy as np
import torch

from ..bench import evaluate_method, load_datasets, pick_device
from ..checkpoint import load_method
from ..errors import ConfigError
from ..io import atomic_path, ensure_dir, write_json
from ..results import environment, summarise
from ..train import collate
from .app import cli, console
from .options import data_options, parse_counts, parse_ints


def _split(data_name: str, root: str | None, preset: str, seed: int, split: str):
    if split not in ("train", "val", "test"):
        raise ConfigError(f"--split must be train, val or test, got '{split}'")
    return load_datasets(data_name, root, preset, seed, splits=(split,))[split]


@cli.command("sample")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@data_options
@click.option("--split", default="test", show_default=True)
@click.option("--indices", default="0", show_default=True, help="comma-separated item indices of the split")
@click.option("--samples", "num", type=int, default=16, show_default=True, help="samples per image")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default=None)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
def sample_cmd(checkpoint: Path, data_name: str, root: str | None, preset: str, split: str, indices: str, num: int,
               seed: int, device: str | None, out: Path) -> None:
    """Draw samples for chosen images: OUT/samples.npz and one PNG per image."""
    from ..data import figure_for_item, save_figure

    if num < 1:
        raise ConfigError(f"--samples must be >= 1, got {num}")
    method, _ = load_method(checkpoint)
    dev = pick_device(device)
    data = _split(data_name, root, preset, seed, split)
    idx = parse_ints(indices, "--indices")
    bad = [i for i in idx if not 0 <= i < len(data)]
    if bad:
        raise ConfigError(f"--indices {bad[0]} is out of range: the {split} split has {len(data)} items (0..{len(data) - 1})")
    ensure_dir(out)
    items = collate([data[i] for i in idx])
    gen = torch.Generator(dev).manual_seed(seed)
    probs = method.to(dev).sample(items["image"].to(dev), num, generator=gen).cpu()
    with atomic_path(out / "samples.npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, samples=(probs >= 0.5).numpy().astype(np.uint8), probs=probs.numpy().astype(np.float16),
                                ids=np.array(items["id"]), indices=np.array(idx))
    for j, i in enumerate(idx):
        fig = figure_for_item(data[i], samples=probs[j], title=f"{method.name}: {data_name} {split} #{i}")
        save_figure(fig, out / f"sample-{split}-{i}.png")
    console.print(f"wrote {out / 'samples.npz'} and {len(idx)} figure(s) in {out}")


@cli.command("eval")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@data_options
@click.option("--split", default="test", show_default=True)
@click.option("--samples", "samples", default="16,32,100", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default=None)
@click.option("--max-batch", type=int, default=None)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="write the metrics JSON here")
def eval_cmd(checkpoint: Path, data_name: str, root: str | None, preset: str, split: str, samples: str, seed: int,
             device: str | None, max_batch: int | None, out: Path | None) -> None:
    """Evaluate CHECKPOINT on a split with every metric (mean and 95% bootstrap interval)."""
    counts = parse_counts(samples)
    method, ckpt = load_method(checkpoint)
    dev = pick_device(device)
    data = _split(data_name, root, preset, seed, split)
    result = evaluate_method(method, data, counts=counts, seed=seed, device=dev, max_batch=max_batch)
    summary = summarise(result["per_image"])
    for key, m in summary.items():
        console.print(f"{key:>14}: {m['mean']:.4f}  [{m['lo']:.4f}, {m['hi']:.4f}]  (n={m['n']})")
    console.print(f"sampling: {np.mean(result['sample_seconds']):.3f} s per image for {max(counts)} samples")
    if out is not None:
        write_json(out, {"checkpoint": str(checkpoint), "method": method.name, "data": data_name, "split": split,
                         "created": dt.datetime.now(dt.timezone.utc).isoformat(), "metrics": summary,
                         "per_image": result["per_image"], "sample_s": result["sample_seconds"],
                         "env": environment(dev), "config": ckpt.config})
