"""The benchmark harness: train (or load) each method on the same data, split and seed,
sample, evaluate, time, and write one JSON record per (method, dataset, seed).
"""
from __future__ import annotations

import contextlib
import datetime as dt
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch.utils.data import Dataset

from . import data as datasets_api
from . import distributed as dist
from .checkpoint import load_checkpoint, load_weights
from .errors import AmbisegError, ConfigError
from .io import ensure_dir, write_json
from .leaderboard import to_rich, write_leaderboard
from .method import Method, apply_overrides, build
from .presets import bench_preset
from .results import RECORD_KIND, environment, summarise
from .train import Trainer, collate, seed_everything

__all__ = ["BenchSpec", "run_bench", "evaluate_method", "load_datasets", "build_for_data", "pick_device",
           "PeakMemory", "count_flops"]

BASELINE = "det-unet"


def pick_device(device: str | None) -> torch.device:
    """`None`/"auto" -> CUDA when present, else CPU; a clear error for an unusable device."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"unknown device '{device}'; use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{device}' requested but CUDA is not available here; use --device cpu")
    return dev


class PeakMemory:
    """Peak memory of a block: CUDA allocator peak on GPU, peak resident set size on CPU (Linux)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak_mb, self.kind = device, None, None

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            with contextlib.suppress(OSError):
                Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mb, self.kind = torch.cuda.max_memory_allocated(self.device) / 2**20, "cuda-allocated"
            return
        with contextlib.suppress(OSError, ValueError):
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    self.peak_mb, self.kind = int(line.split()[1]) / 1024, "process-peak-rss"


def count_flops(method: Method, image: torch.Tensor) -> dict[str, float] | None:
    """FLOPs of sampling: per image (image-only work) and per extra sample, from S=1 and S=2."""
    from torch.utils.flop_counter import FlopCounterMode

    totals = []
    for s in (1, 2):
        counter = FlopCounterMode(display=False)
        with counter:
            method.sample(image, s, generator=torch.Generator(image.device).manual_seed(0))
        totals.append(float(counter.get_total_flops()))
    per_sample = totals[1] - totals[0]
    return {"per_sample": per_sample, "per_image": totals[0] - per_sample}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def evaluate_method(method: Method, test_set: Dataset, *, counts: tuple[int, ...], seed: int,
                    device: torch.device, warmup: bool = True, max_batch: int | None = None) -> dict[str, Any]:
    """Sample max(counts) masks per test image (one image at a time, timed, warm), then score.

    Returns per-image metric lists, timing, peak memory and (for data with known modes) the
    metrics against the true distribution.
    """
    from . import metrics

    total = max(counts)
    method.to(device).eval()
    n = len(test_set)
    if n == 0:
        raise AmbisegError("the test set is empty; check the dataset root, split and limits")
    first = collate([test_set[0]])["image"].to(device)
    if warmup:
        method.sample(first, min(2, total), generator=torch.Generator(device).manual_seed(0), max_batch=max_batch)
    mine = []
    with PeakMemory(device) as peak:
        for i in dist.shard(list(range(n))):  # each rank its share; the generator depends on i only
            image = collate([test_set[i]])["image"].to(device)
            gen = torch.Generator(device).manual_seed(seed * 100_003 + i)
            _sync(device)
            t0 = time.perf_counter()
            out = method.sample(image, total, generator=gen, max_batch=max_batch)
            _sync(device)
            mine.append((i, (out >= 0.5).cpu(), time.perf_counter() - t0))
    parts = dist.gather_objects((mine, peak.peak_mb))
    gathered = sorted((x for items, _ in parts for x in items), key=lambda x: x[0])
    samples, seconds = [x[1] for x in gathered], [x[2] for x in gathered]
    peaks = [p for _, p in parts if p is not None]
    per_image: dict[str, list[float]] = {}
    truth: dict[str, list[Any]] = {}
    for start in range(0, n, 8):
        items = collate([test_set[i] for i in range(start, min(n, start + 8))])
        s = torch.cat(samples[start:start + 8])
        known = {"modes": items["modes"], "probs": items["mode_probs"]} if "modes" in items else {}
        for key, value in metrics.evaluate(s, items["masks"], counts=counts, **known).items():
            per_image.setdefault(key, []).extend(value.tolist())
        if known:
            truth.setdefault(f"mode_mass{total}", []).extend(metrics.mode_mass(s, items["modes"], items["mode_probs"]).tolist())
            truth.setdefault("mode_probs", []).extend(items["mode_probs"].tolist())
    return {"per_image": per_image, "truth": truth, "sample_seconds": seconds, "samples_per_image": total,
            "peak_mb": max(peaks) if peaks else None, "memory_kind": peak.kind}


def load_datasets(name: str, root: str | None, preset: str, seed: int,
                  splits: tuple[str, ...] = ("train", "val", "test")) -> dict[str, Dataset]:
    """The `splits` of dataset `name`, sized by bench preset `preset`."""
    p = bench_preset(preset)
    out = {}
    for split in splits:
        opts = {**p.data_options(name, split), "seed": seed}
        if root is not None:
            opts["root"] = root
        out[split] = datasets_api.build(name, split=split, **opts)
    return out


def build_for_data(name: str, dataset: Dataset, *, preset: str | None, overrides: dict[str, Any]) -> Method:
    """Build recipe `name` sized for `dataset` (channels, image size) with CLI-style overrides."""
    image_size = int(getattr(dataset, "image_shape", (None,))[0] or 0) or None
    method = build(name, preset=preset, in_channels=int(getattr(dataset, "in_channels", 1)), image_size=image_size)
    if overrides:
        method = Method.from_config(apply_overrides(method.config, overrides))
    return method


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
    baseline: bool = True
    retrain: bool = False
    progress: bool = True
    max_batch: int | None = None


def _run_dir(spec: BenchSpec, method: str, seed: int) -> Path:
    return spec.out / "runs" / f"{method}-{spec.data}-{spec.preset}-seed{seed}"


def _train_or_load(method: Method, sets: dict[str, Dataset], run_dir: Path, spec: BenchSpec, seed: int,
                   device: torch.device, console: Console) -> float:
    """Train `method` into `run_dir`, resuming an interrupted run; load a finished one. Returns seconds."""
    last = run_dir / "last.safetensors"
    if last.exists() and not spec.retrain:
        ckpt = load_checkpoint(last, method=method.name)
        if ckpt.config != method.config:
            raise AmbisegError(f"{run_dir} holds a {method.name} run with another configuration; "
                               "pass --retrain to replace it or choose another --out")
        if ckpt.meta.get("stage_index") == len(method.stages):
            load_weights(method, ckpt, source=str(last))
            console.print(f"[dim]{method.name}: loaded the trained checkpoint {last}[/dim]")
            return float(ckpt.meta.get("seconds", 0.0))
    elif last.exists():
        last.unlink()
        (run_dir / "best.safetensors").unlink(missing_ok=True)
    trainer = Trainer(method, sets["train"], sets["val"], out_dir=run_dir, seed=seed, device=device,
                      progress=spec.progress, console=console)
    return trainer.fit(resume=True).seconds


def run_bench(spec: BenchSpec, *, console: Console | None = None) -> list[dict[str, Any]]:
    """Run the benchmark; returns the records written (also under `spec.out/results`)."""
    console = console or Console(stderr=True)
    if not spec.methods:
        raise ConfigError("--methods is empty; give at least one registered method (see `ambiseg list`)")
    if any(c < 1 for c in spec.counts):
        raise ConfigError(f"--samples must be positive integers, got {','.join(map(str, spec.counts))}")
    preset = bench_preset(spec.preset)
    device = pick_device(spec.device)
    ensure_dir(spec.out)
    names = ([BASELINE] if spec.baseline and BASELINE not in spec.methods else []) + list(spec.methods)
    method_preset = preset.method_preset_for(spec.data)
    records = []
    for seed in spec.seeds:
        sets = load_datasets(spec.data, spec.root, spec.preset, seed)
        for name in names:
            seed_everything(seed)
            method = build_for_data(name, sets["train"], preset=method_preset, overrides=spec.overrides)
            console.print(f"[bold]{method.name}[/bold] on {spec.data} (preset {spec.preset}, seed {seed}, "
                          f"{method.num_parameters():,} parameters, device {device})")
            untrained = evaluate_method(method, sets["test"], counts=(preset.untrained_samples,), seed=seed,
                                        device=device, warmup=False, max_batch=spec.max_batch)
            run_dir = ensure_dir(_run_dir(spec, method.name, seed))
            train_s = _train_or_load(method, sets, run_dir, spec, seed, device, console)
            result = evaluate_method(method, sets["test"], counts=spec.counts, seed=seed, device=device,
                                     warmup=preset.warmup, max_batch=spec.max_batch)
            image = collate([sets["test"][0]])["image"].to(device)
            flops = count_flops(method, image) if preset.flops else None
            key = f"GED{preset.untrained_samples}"
            record = {
                "kind": RECORD_KIND, "created": dt.datetime.now(dt.timezone.utc).isoformat(),
                "method": method.name, "dataset": spec.data, "preset": spec.preset, "seed": seed,
                "root": spec.root, "config": method.config, "counts": list(spec.counts),
                "sizes": {k: len(v) for k, v in sets.items()},
                "metrics": summarise(result["per_image"]), "per_image": result["per_image"],
                "untrained": {"GED": sum(untrained["per_image"][key]) / len(untrained["per_image"][key]),
                              "samples": preset.untrained_samples},
                "truth": {k: _mean_rows(v) for k, v in result["truth"].items()},
                "timing": {"train_s": train_s, "sample_s_per_image": sum(result["sample_seconds"]) / len(result["sample_seconds"]),
                           "samples_per_image": result["samples_per_image"], "sample_s": result["sample_seconds"],
                           "nfe": method.sampler.nfe},
                "memory": {"peak_mb": result["peak_mb"], "kind": result["memory_kind"], "max_batch": spec.max_batch or method.max_batch},
                "params": method.num_parameters(), "flops": flops or {}, "env": environment(device),
                "checkpoint": str(run_dir / "last.safetensors"),
            }
            stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
            if dist.is_main():
                write_json(spec.out / "results" / f"{method.name}-{spec.data}-{spec.preset}-seed{seed}-{stamp}.json", record)
            records.append(record)
    if not dist.is_main():
        return records
    rows, paths = write_leaderboard([spec.out], spec.out)
    for table in to_rich(rows):
        console.print(table)
    console.print(f"leaderboard written to {paths['md']} (also .csv, .tex, .png)")
    return records


def _mean_rows(rows: list[Any]) -> Any:
    tensor = torch.tensor(rows, dtype=torch.float64)
    return tensor.mean(0).tolist()
