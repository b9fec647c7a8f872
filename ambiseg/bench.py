"""The benchmark harness: train (or load) each method on the same data, split and seed,
sample, evaluate, time, and write one JSON record per (method, dataset, seed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from . import distributed as dist
from .bench_presets import bench_preset
from .checkpoint import Checkpoint, load_checkpoint, load_weights
from .console import make_console
from .data.base import ItemDataset
from .data.spec import DataSpec, training_data
from .errors import AmbisegError, ConfigError
from .evaluation import InferenceOptions, count_flops, evaluate_method
from .expectations import expectation_lines, load_average
from .files import check_dir, ensure_dir, write_json
from .leaderboard import build_rows, leaderboard_paths, to_rich, write_leaderboard
from .lock import run_lock
from .method import Method
from .protocols import Protocol, get_protocol, over_budget
from .recipes import build_for_data
from .reference import reference_records
from .results import RECORD_SCHEMA, REFERENCE_KIND, environment, make_record, read_records
from .runtime import collate, pick_device, seed_everything
from .threads import available_cpus
from .train import Trainer

__all__ = ["BenchSpec", "run_bench"]

BASELINE = "det-unet"


@dataclass
class BenchSpec:
    """What `ambiseg bench` runs."""

    methods: list[str]
    data: str = "synthetic"
    root: str | None = None
    preset: str = "cpu"
    device: str | None = None
    seeds: tuple[int, ...] = (0,)
    counts: tuple[int, ...] = (16, 32, 100)
    out: Path = Path("runs/bench")
    overrides: dict[str, Any] = field(default_factory=dict)
    data_settings: dict[str, Any] = field(default_factory=dict)
    baseline: bool = True
    retrain: bool = False
    progress: bool = True
    inference: InferenceOptions = field(default_factory=InferenceOptions)
    protocol: str | None = None
    references: bool = True

    def data_spec(self) -> DataSpec:
        """The data every method of this bench trains and is scored on (the protocol's settings
        over the preset's; a `--set data.*` that contradicts the protocol is refused)."""
        settings = dict(self.data_settings)
        if self.protocol is not None:
            protocol = get_protocol(self.protocol)
            if self.data != protocol.dataset:
                raise ConfigError(f"protocol {protocol.name} is defined on --data {protocol.dataset}, not {self.data}")
            clash = next((k for k, v in settings.items() if protocol.data_settings.get(k, v) != v), None)
            if clash is not None:
                raise ConfigError(
                    f"--set {clash}={settings[clash]} contradicts protocol {protocol.name} "
                    f"({clash}={protocol.data_settings[clash]}); drop it or drop --protocol"
                )
            if tuple(self.counts) != protocol.counts:
                raise ConfigError(
                    f"protocol {protocol.name} scores {','.join(map(str, protocol.counts))} samples, "
                    f"not {','.join(map(str, self.counts))}; drop --samples"
                )
            settings.update(protocol.data_settings)
        return DataSpec(name=self.data, root=self.root, preset=self.preset).with_settings(settings)


def _run_dir(spec: BenchSpec, method: str, seed: int) -> Path:
    return spec.out / "runs" / f"{method}-{spec.data}-{spec.preset}-seed{seed}"


def _existing_run(method: Method, data: dict[str, Any], run_dir: Path, spec: BenchSpec) -> Checkpoint | None:
    """The checkpoint of an earlier run of `method` in `run_dir` that this bench may continue or load
    (None when there is none or `--retrain`); one of another configuration or data is refused, so
    the bench stops before spending time on it."""
    last = run_dir / "last.safetensors"
    if spec.retrain or not last.exists():
        return None
    ckpt = load_checkpoint(last, method=method.name)
    # Normalised through from_config: a run saved before an option existed (so its config lacks
    # the key) is the same configuration when that option's default reproduces it. The sampler
    # is not trained: a run sampled another way now (e.g. fewer steps) is the same trained run.
    same_config = _trained_part(Method.from_config(ckpt.config).config) == _trained_part(method.config)
    same_data = training_data(ckpt.meta.get("data")) == training_data(data)
    what = "configuration" if not same_config else "data" if not same_data else None
    if what is not None:
        raise AmbisegError(
            f"{run_dir} holds a {method.name} run with another {what}; "
            "pass --retrain to replace it or choose another --out"
        )
    return ckpt


def _same_config(recorded: Any, config: dict[str, Any]) -> bool:
    """A record's config is this one when rebuilding it gives this one (an option added since it was
    written takes its default, which reproduces the old behaviour)."""
    if recorded == config:
        return True
    try:
        return isinstance(recorded, dict) and Method.from_config(recorded).config == config
    except AmbisegError:
        return False


def _trained_part(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k != "sampler"}


def _finished_record(spec: BenchSpec, method: Method, seed: int, data: dict[str, Any]) -> dict[str, Any] | None:
    """A record in `spec.out` of this very evaluation (method config, data, seed, counts, protocol,
    preset): a bench that stopped after some methods continues with the rest instead of redoing them."""
    folder = spec.out / "results"
    if spec.retrain or not folder.is_dir() or not dist.is_main():
        return None
    for rec in read_records([folder], allow_empty=True):
        if (
            rec["method"] == method.name
            and rec["seed"] == seed
            and _same_config(rec.get("config"), method.config)
            and rec.get("data") == data
            and rec.get("counts") == list(spec.counts)
            and (rec.get("protocol") or {}).get("name") == spec.protocol
            and not rec.get("reference")
        ):
            return rec
    return None


def _train_or_load(
    method: Method,
    sets: Mapping[str, ItemDataset],
    data: dict[str, Any],
    run_dir: Path,
    spec: BenchSpec,
    seed: int,
    device: torch.device,
    console: Console,
) -> float:
    """Train `method` on `sets` (described by the data spec `data`) into `run_dir`, resuming an
    interrupted run; load a finished one. Holds the run directory's lock. Returns seconds."""
    with run_lock(run_dir) if dist.is_main() else contextlib.nullcontext():
        last = run_dir / "last.safetensors"
        ckpt = _existing_run(method, data, run_dir, spec)
        if ckpt is not None:
            if ckpt.meta.get("stage_index") == len(method.stages):
                load_weights(method, ckpt, source=str(last))
                console.print(f"[dim]{method.name}: loaded the trained checkpoint {last}[/dim]")
                return float(ckpt.meta.get("seconds", 0.0))
        elif last.exists():
            last.unlink()
            (run_dir / "best.safetensors").unlink(missing_ok=True)
        trainer = Trainer(
            method,
            sets["train"],
            sets["val"],
            out_dir=run_dir,
            seed=seed,
            device=device,
            progress=spec.progress,
            console=console,
            data=data,
            log=run_dir / "history.csv",
        )
        return trainer.fit(resume=True).seconds


def run_bench(spec: BenchSpec, *, console: Console | None = None) -> list[dict[str, Any]]:
    """Run the benchmark; returns the records written (also under `spec.out/results`)."""
    console = console or make_console(stderr=True)
    if not spec.methods:
        raise ConfigError("--methods is empty; give at least one registered method (see `ambiseg list`)")
    if any(c < 1 for c in spec.counts):
        raise ConfigError(f"--samples must be positive integers, got {','.join(map(str, spec.counts))}")
    preset = bench_preset(spec.preset)
    leaderboard_paths(spec.out)  # an output in the way is refused now, not after the training
    check_dir(spec.out / "results")
    data_spec = spec.data_spec()
    device = pick_device(spec.device)
    sets = data_spec.build_splits()
    protocol = get_protocol(spec.protocol) if spec.protocol is not None else None
    if protocol is not None:
        protocol.check_test_ids(list(getattr(sets["test"], "ids", [])), where=f"{spec.data} at {spec.root}")
    names = ([BASELINE] if spec.baseline and BASELINE not in spec.methods else []) + list(spec.methods)
    method_preset = preset.method_presets_for(spec.data)

    def overrides_of(name: str) -> dict[str, Any]:  # --set names the methods' options, not the baseline row's
        return {} if name == BASELINE and name not in spec.methods else spec.overrides

    for name in names:  # a bad --set or preset is refused before any work or output, not after other methods ran
        build_for_data(name, sets["train"], preset=method_preset, overrides=overrides_of(name))
    ensure_dir(spec.out)
    if spec.overrides and names[0] != spec.methods[0]:
        console.print(
            f"[dim]{BASELINE} (the baseline row) is built without --set, which names the methods' options; "
            f"add it to --methods to apply them to it[/dim]"
        )
    if dist.is_main():
        for line in expectation_lines(
            spec.data,
            spec.preset,
            names,
            seeds=len(spec.seeds),
            threads=torch.get_num_threads(),
            cpus=available_cpus(),
            load=load_average(),
        ):
            console.print(f"[yellow]{line}[/yellow]" if line.startswith("load") else line)
    records = []
    mine: set[Path] = set()  # this run's record files: the printed table shows these, not earlier runs'
    for seed in spec.seeds:
        for name in names:
            seed_everything(seed)
            method = build_for_data(name, sets["train"], preset=method_preset, overrides=overrides_of(name))
            done = _finished_record(spec, method, seed, data_spec.to_dict())
            if done is not None:
                console.print(f"[dim]{method.name} seed {seed}: already evaluated in {spec.out / 'results'}[/dim]")
                records.append(done)
                mine.add(Path(done["_file"]).resolve())
                continue
            console.print(
                f"[bold]{method.name}[/bold] on {spec.data} (preset {spec.preset}, seed {seed}, "
                f"{method.num_parameters():,} parameters, device {device}, threads {torch.get_num_threads()})"
            )
            run_dir = _run_dir(spec, method.name, seed)
            _existing_run(method, data_spec.to_dict(), run_dir, spec)  # refuse a mismatch before any work
            started = time.perf_counter()
            untrained = evaluate_method(
                method,
                sets["test"],
                counts=(preset.untrained_samples,),
                seed=seed,
                device=device,
                warmup=False,  # plain layout and precision: the options apply to the trained model's timing
                options=InferenceOptions(max_batch=spec.inference.max_batch, image_batch=spec.inference.image_batch),
            )
            untrained_eval_s = time.perf_counter() - started
            ensure_dir(run_dir)
            train_s = _train_or_load(method, sets, data_spec.to_dict(), run_dir, spec, seed, device, console)
            if protocol is not None and over_budget(protocol.to_dict(), train_s):
                console.print(
                    f"[yellow]{method.name} seed {seed} trained {train_s / 60:.1f} min, over protocol "
                    f"{protocol.name}'s {protocol.train_budget_minutes}-minute budget "
                    "(marked in the leaderboard)[/yellow]"
                )
            eval_started = time.perf_counter()
            result = evaluate_method(
                method,
                sets["test"],
                counts=spec.counts,
                seed=seed,
                device=device,
                warmup=preset.warmup,
                options=spec.inference,
            )
            eval_s = time.perf_counter() - eval_started
            image = collate([sets["test"][0]])["image"].to(device)
            flops = count_flops(method, image) if preset.flops else None
            key = f"GED{preset.untrained_samples}"
            record = make_record(
                method=method.name,
                dataset=spec.data,
                preset=spec.preset,
                seed=seed,
                counts=spec.counts,
                per_image=result["per_image"],
                timing={
                    "train_s": train_s,
                    # wall seconds of the whole (method, seed): the untrained and trained evaluations with their
                    # metrics, and the training (or the checkpoint load, when the run was trained earlier)
                    "untrained_eval_s": untrained_eval_s,
                    "eval_s": eval_s,
                    "total_s": time.perf_counter() - started,
                    "sample_s_per_image": sum(result["sample_seconds"]) / len(result["sample_seconds"]),
                    "samples_per_image": result["samples_per_image"],
                    "sample_s": result["sample_seconds"],
                    "nfe": method.sampler.nfe,
                    "inference": dataclasses.asdict(spec.inference),
                },
                params=method.num_parameters(),
                env=environment(device),
                protocol=protocol.to_dict() if protocol is not None else None,
                root=spec.root,
                data=data_spec.to_dict(),
                config=method.config,
                sizes={k: len(v) for k, v in sets.items()},
                untrained={
                    "GED": sum(untrained["per_image"][key]) / len(untrained["per_image"][key]),
                    "samples": preset.untrained_samples,
                },
                # per test image, so "beats its own untrained weights" is a paired claim with an interval
                untrained_per_image={key: untrained["per_image"][key]},
                truth={k: _mean_rows(v) for k, v in result["truth"].items()},
                memory={
                    "peak_mb": result["peak_mb"],
                    "kind": result["memory_kind"],
                    "max_batch": spec.inference.max_batch or method.max_batch,
                },
                flops=flops or {},
                checkpoint=str(run_dir / "last.safetensors"),
            )
            stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
            if dist.is_main():
                target = spec.out / "results" / f"{method.name}-{spec.data}-{spec.preset}-seed{seed}-{stamp}.json"
                write_json(target, record)
                mine.add(target.resolve())
            records.append(record)
    if not dist.is_main():
        return records
    if spec.references:
        mine.add(_write_references(spec, sets["test"], data_spec.to_dict(), protocol, device, console).resolve())
    _report(spec.out, mine, console)
    return records


def _report(out: Path, mine: set[Path], console: Console) -> None:
    """Write the leaderboard of every record in `out` and print the table of this run's records
    (`mine`): records that earlier runs left in `out` (other methods, seeds, or an interrupted run)
    go into the files but not into this run's table, and the last line says how many there are."""
    everything = read_records([out])
    _, paths = write_leaderboard([out], out, records=everything)
    own = [r for r in everything if Path(r["_file"]).resolve() in mine]
    for table in to_rich(build_rows(own)):
        console.print(table)
    others = len(everything) - len(own)
    where = f"{paths['md']} (also .csv, .tex, .png)"
    if others:
        console.print(
            f"leaderboard of all {len(everything)} records in {out} written to {where}; the table above holds "
            f"this run's {len(own)}, the files also {others} that earlier runs left there "
            f"(`ambiseg leaderboard {out}` prints them all; a new --out keeps runs apart)"
        )
    else:
        console.print(f"leaderboard written to {where}")


def _write_references(
    spec: BenchSpec,
    test_set: ItemDataset,
    data: dict[str, Any],
    protocol: Protocol | None,
    device: torch.device,
    console: Console,
) -> Path:
    """The reference rows of this test set (majority vote, union, empty, raters), once per output;
    returns their file."""
    folder = ensure_dir(spec.out / "results")
    name = f"reference-{spec.data}-{spec.preset}.json"
    target = folder / name
    if target.exists():
        return target
    console.print(f"[dim]reference rows from the annotations of {len(test_set)} test images[/dim]")
    rows = reference_records(
        test_set,
        counts=spec.counts,
        device=device,
        dataset=spec.data,
        preset=spec.preset,
        data=data,
        root=spec.root,
        protocol=protocol.to_dict() if protocol is not None else None,
    )
    write_json(target, {"kind": REFERENCE_KIND, "schema": RECORD_SCHEMA, "records": rows})
    return target


def _mean_rows(rows: list[Any]) -> Any:
    tensor = torch.tensor(rows, dtype=torch.float64)
    return tensor.mean(0).tolist()
