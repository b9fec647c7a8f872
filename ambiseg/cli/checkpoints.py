"""`ambiseg sample` and `ambiseg eval`: use a trained checkpoint."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..errors import AmbisegError, ConfigError, NonFiniteError
from ..files import atomic_paths, check_target, suffix_kind, write_json
from ..inference import InferenceOptions
from ..pretrained import resolve_checkpoint
from ..registry import datasets
from .app import cli, console, read_inputs
from .options import (
    MAX_SAMPLES,
    OutPath,
    data_options,
    data_set_option,
    inference_options,
    parse_counts,
    parse_ints,
    parse_sets,
    seed_option,
    split_sets,
    threads_option,
)

if TYPE_CHECKING:  # the commands import torch and the modules below when they run, not at start-up
    import torch

    from ..checkpoint import Checkpoint
    from ..data.base import AnnotatedDataset
    from ..data.spec import DataSpec
    from ..method import Method


def load_run(path: Path, sets: tuple[str, ...]) -> tuple[Method, Checkpoint, dict[str, Any]]:
    """The checkpoint's method with the sampling overrides among `sets` (`prior.*`, `transport.*`,
    `sampler.*`; e.g. `sampler.steps=10`); training options are refused: the weights are trained."""
    from ..checkpoint import load_method

    settings = split_sets(parse_sets(sets))[0]
    trained = [k for k in settings if k.split(".")[0] in ("train", "stages", "in_channels", "image_size")]
    if trained:
        raise ConfigError(
            f"--set {trained[0]}: a trained checkpoint's {trained[0].split('.')[0]} cannot change; "
            "here only sampling options (prior.*, transport.*, sampler.*, max_batch) and data.* apply"
        )
    method, ckpt = load_method(path, overrides=settings)
    stages, done = len(method.stages), ckpt.meta.get("stage_index")
    if done is not None and (type(done) is not int or not 0 <= done <= stages):
        raise AmbisegError(
            f"{path}: training state 'stage_index' is {done!r}, not an integer in 0..{stages}; "
            "the checkpoint is damaged"
        )
    if done is not None and done < stages:  # legitimate for learning curves, never to be mistaken for a result
        click.echo(
            f"note: {path} holds an unfinished run (stage {method.stages[done]!r} of "
            f"{', '.join(method.stages)} not finished); its scores are not the trained method's",
            err=True,
        )
    return method, ckpt, settings


def _run_data(
    path: Path, ckpt: Checkpoint, data_name: str | None, root: str | None, preset: str | None, sets: tuple[str, ...]
) -> DataSpec:
    """The data to score on: the run's own (recorded in the checkpoint), changed only where the user says.

    Another dataset name starts from that dataset's defaults; `--root`, `--preset` and
    `--set data.*` change the recorded spec.
    """
    from ..data.spec import DataSpec

    data_settings = split_sets(parse_sets(sets))[1]
    recorded = ckpt.meta.get("data")
    base = DataSpec.from_dict(recorded, where=f"checkpoint {path} data record") if recorded else DataSpec()
    if recorded is None and data_name is None:
        console.print(f"[dim]{path} records no data; using {base.describe()}[/dim]")
    if data_name is not None and datasets.canonical(data_name) != datasets.canonical(base.name):
        base = DataSpec(name=data_name)
    changed = dataclasses.replace(
        base, root=root if root is not None else base.root, preset=preset if preset is not None else base.preset
    )
    return changed.with_settings(data_settings)


def _check_split(split: str) -> str:
    """`split` if it names a split, else a ConfigError."""
    from ..data.spec import SPLIT_NAMES

    if split not in SPLIT_NAMES:
        raise ConfigError(f"--split must be one of {', '.join(SPLIT_NAMES)}, got '{split}'")
    return split


def _load_split(spec: DataSpec, split: str, method: Method, path: Path) -> AnnotatedDataset:
    """Split `split` of `spec`, refused in one line when its images do not fit the trained method."""
    data = spec.build(_check_split(split))
    check_fits(method, data, path, spec.describe(), fix="drop the data flags to score the run's own data")
    return data


def check_fits(method: Method, data: AnnotatedDataset, path: Path, what: str, *, fix: str) -> None:
    """Refuse in one line data whose channels or image size differ from what `method` (from `path`) was trained on."""
    config = method.config
    size = config.get("image_size")
    want = f"{config['in_channels']}-channel" + (f" {size}x{size}" if size else "")
    have_h, have_w = data.image_shape
    if data.in_channels != config["in_channels"] or (size is not None and (have_h, have_w) != (size, size)):
        raise ConfigError(
            f"{path} was trained on {want} images but {what} has {data.in_channels}-channel "
            f"{have_h}x{have_w} images; {fix}, or choose data of the trained size"
        )


def draw_samples(
    method: Method,
    images: torch.Tensor,
    num: int,
    *,
    seed: int,
    path: Path,
    what: str,
    device: torch.device | None = None,
    inference: InferenceOptions | None = None,
) -> torch.Tensor:
    """`num` samples [N, num, H, W] (float, CPU) of `method` for `images`, refusing non-finite ones
    (NaN >= 0.5 is False: they would be drawn or saved as empty masks)."""
    import torch

    dev = device or torch.device("cpu")
    inference = inference or InferenceOptions()
    gen = torch.Generator(dev).manual_seed(seed)
    with inference.autocast(dev):
        probs = inference.prepare(method, dev).sample(images.to(dev), num, generator=gen, max_batch=inference.max_batch)
    probs = probs.float().cpu()
    if not torch.isfinite(probs).all():
        raise NonFiniteError(
            f"{path} gives non-finite samples for {what}; nothing is written (are the weights damaged?)"
        )
    return probs


@dataclasses.dataclass
class _Run:
    """A trained run opened for `sample` or `eval`: the method, its checkpoint, the sampling
    overrides, the data spec, the device and the split's data."""

    method: Method
    ckpt: Checkpoint
    overrides: dict[str, Any]
    spec: DataSpec
    device: torch.device
    data: AnnotatedDataset


def _open_run(
    checkpoint: Path,
    data_name: str | None,
    root: str | None,
    preset: str | None,
    sets: tuple[str, ...],
    split: str,
    device: str | None,
) -> _Run:
    """Load `checkpoint` (already resolved and read as an input) with its data and split; every
    mismatch is refused in one line before any sampling."""
    from ..runtime import pick_device

    method, ckpt, overrides = load_run(checkpoint, sets)
    spec = _run_data(checkpoint, ckpt, data_name, root, preset, sets)
    read_inputs(spec.root)
    dev = pick_device(device)
    return _Run(method, ckpt, overrides, spec, dev, _load_split(spec, split, method, checkpoint))


def _checkpoint_inputs(command: Callable[..., Any]) -> Callable[..., Any]:
    """The inputs of a command on a trained run: CHECKPOINT, its data (the recorded data by
    default) and the split."""
    command = click.option(
        "--split", default="test", show_default=True, help="train, val, test or all (a whole dataset)"
    )(command)
    command = data_set_option(command)
    command = data_options(recorded=True)(command)
    return click.argument("checkpoint", type=click.Path(path_type=Path))(command)


def _sampling_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The seed of the sample generators and the device."""
    command = click.option("--device", default=None)(command)
    return seed_option("seed of the sample generators")(command)


@cli.command("sample")
@_checkpoint_inputs
@click.option("--indices", default="0", show_default=True, help="comma-separated item indices of the split")
@click.option("--samples", "num", type=int, default=16, show_default=True, help="samples per image")
@_sampling_options
@inference_options(image_batch=False)
@click.option("--out", type=OutPath(file_okay=False, path_type=Path), required=True)
@threads_option
def sample_cmd(
    checkpoint: Path,
    data_name: str | None,
    root: str | None,
    preset: str | None,
    sets: tuple[str, ...],
    split: str,
    indices: str,
    num: int,
    seed: int,
    device: str | None,
    inference: InferenceOptions,
    out: Path,
) -> None:
    """Draw samples for chosen images: OUT/samples.npz and one PNG per image."""
    import numpy as np

    from ..data import figure_for_item
    from ..runtime import collate

    if not 1 <= num <= MAX_SAMPLES:
        raise ConfigError(f"--samples must be between 1 and {MAX_SAMPLES}, got {num}")
    idx = parse_ints(indices, "--indices")
    checkpoint = resolve_checkpoint(checkpoint)
    read_inputs(checkpoint, root)
    targets = _sample_targets(out, split, idx)  # every output, before any work
    run = _open_run(checkpoint, data_name, root, preset, sets, split, device)
    method, spec, data = run.method, run.spec, run.data
    bad = [i for i in idx if not 0 <= i < len(data)]
    if bad:
        raise ConfigError(
            f"--indices {bad[0]} is out of range: the {split} split has {len(data)} items (0..{len(data) - 1})"
        )
    items = collate([data[i] for i in idx])
    what = f"the {split} items {list(idx)}"
    probs = draw_samples(
        method, items["image"], num, seed=seed, path=checkpoint, what=what, device=run.device, inference=inference
    )
    with atomic_paths(targets) as temps:  # all or nothing: a failed figure keeps the previous samples.npz
        with open(temps[0], "wb") as fh:
            np.savez_compressed(
                fh,
                samples=(probs >= 0.5).numpy().astype(np.uint8),
                probs=probs.numpy().astype(np.float16),
                ids=np.array(items["id"]),
                indices=np.array(idx),
            )
        for j, (i, tmp) in enumerate(zip(idx, temps[1:], strict=True)):
            fig = figure_for_item(data[i], samples=probs[j], title=f"{method.name}: {spec.name} {split} #{i}")
            fig.savefig(tmp, format="png", dpi=100)
    console.print(f"wrote {out / 'samples.npz'} and {len(idx)} figure(s) in {out}")


def _sample_targets(out: Path, split: str, indices: tuple[int, ...]) -> list[Path]:
    """The files `sample` writes (samples.npz, one figure per index), each checked as an output."""
    targets = [out / "samples.npz", *(out / f"sample-{_check_split(split)}-{i}.png" for i in indices)]
    for target in targets:
        check_target(target, kind=suffix_kind(target))
    return targets


@cli.command("eval")
@_checkpoint_inputs
@click.option("--samples", "samples", default="16,32,100", show_default=True)
@_sampling_options
@inference_options
@click.option("--out", type=OutPath(dir_okay=False, path_type=Path), default=None, help="write the metrics JSON here")
@threads_option
def eval_cmd(
    checkpoint: Path,
    data_name: str | None,
    root: str | None,
    preset: str | None,
    sets: tuple[str, ...],
    split: str,
    samples: str,
    seed: int,
    device: str | None,
    inference: InferenceOptions,
    out: Path | None,
) -> None:
    """Evaluate CHECKPOINT on a split with every metric (mean and 95% bootstrap interval).

    With no data flags the run's own data (recorded in the checkpoint) is used.
    """
    import numpy as np

    from ..evaluation import evaluate_method
    from ..results import environment, make_record, summarise

    counts = parse_counts(samples)
    checkpoint = resolve_checkpoint(checkpoint)
    read_inputs(checkpoint, root)
    if out is not None:  # before the work: a folder, an input or a file of another kind is refused now
        check_target(out, kind="json")
    run = _open_run(checkpoint, data_name, root, preset, sets, split, device)
    method, ckpt, spec, data, dev = run.method, run.ckpt, run.spec, run.data, run.device
    console.print(f"[dim]scoring {method.name} on {spec.describe()}, split {split} ({len(data)} images)[/dim]")
    result = evaluate_method(method, data, counts=counts, seed=seed, device=dev, options=inference)
    summary = summarise(result["per_image"])
    width = max(map(len, summary), default=0)
    for key, m in summary.items():
        if m["n"] == 0:
            console.print(f"{key:>{width}}: -  (undefined on every image)")
            continue
        skipped = len(result["per_image"][key]) - m["n"]  # NaN: undefined there (docs/metrics.md)
        note = f", {skipped} image(s) where it is undefined left out" if skipped else ""
        console.print(f"{key:>{width}}: {m['mean']:.4f}  [{m['lo']:.4f}, {m['hi']:.4f}]  (n={m['n']}{note})")
    console.print(f"sampling: {np.mean(result['sample_seconds']):.3f} s per image for {max(counts)} samples")
    if out is not None:
        record = make_record(
            method=method.name,
            dataset=spec.name,
            preset=spec.preset,
            seed=seed,
            counts=counts,
            per_image=result["per_image"],
            timing={
                "train_s": float(ckpt.meta.get("seconds", 0.0)),
                "sample_s_per_image": float(np.mean(result["sample_seconds"])),
                "samples_per_image": result["samples_per_image"],
                "sample_s": result["sample_seconds"],
                "nfe": method.sampler.nfe,
                "inference": dataclasses.asdict(inference),
            },
            params=method.num_parameters(),
            env=environment(dev),
            checkpoint=str(checkpoint),
            stages_finished=ckpt.meta.get("stage_index"),
            data=spec.to_dict(),
            split=split,
            config=method.config,
            overrides=run.overrides,
        )
        write_json(out, record)
