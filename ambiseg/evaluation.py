"""Evaluation of a method on a test set: `evaluate_method` (sample, time and score every test
image), `InferenceOptions` (batching, precision, layout, compilation of sampling; defined in
`ambiseg.inference`), `PeakMemory` (peak memory of a block) and `count_flops` (FLOPs of sampling).

`evaluate_method` streams: each group of images is scored as soon as its samples exist and only
its numbers are kept, so memory holds one group's samples whatever the size of the test set.
Under torchrun every rank takes its share of the images and only those numbers (with the
timings and peak memory) are gathered.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from . import distributed as dist
from . import metrics
from .data.base import ItemDataset
from .errors import AmbisegError, ConfigError, NonFiniteError
from .inference import COMPILE_MODES, PRECISION_DTYPES, InferenceOptions
from .method import Method
from .runtime import collate

__all__ = ["evaluate_method", "InferenceOptions", "PRECISIONS", "COMPILE_MODES", "PeakMemory", "count_flops"]


class PeakMemory:
    """Peak memory of a block: CUDA allocator peak on GPU, peak resident set size on CPU (Linux)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_mb: float | None = None  # set on exit
        self.kind: str | None = None  # what `peak_mb` measures: "cuda-allocated" or "process-peak-rss"

    def __enter__(self) -> PeakMemory:
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


def _groups(indices: list[int], size: int) -> list[list[int]]:
    return [indices[k : k + size] for k in range(0, len(indices), size)]


def _score(
    samples: torch.Tensor, item: dict[str, Any], counts: tuple[int, ...], total: int
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """One image's metrics and (for data with known modes) truth rows, as plain Python numbers.

    `samples` is the float32 probabilities `[1, S, H, W]` on the CPU (every metric binarises them
    at 0.5 but SoftShare, which reads them as they are) and `item` the image collated alone.
    """
    known = {"modes": item["modes"], "probs": item["mode_probs"]} if "modes" in item else {}
    with torch.autocast("cpu", enabled=False):  # sampling may run under bf16 autocast; scoring never does
        found = metrics.evaluate(samples, item["masks"], counts=counts, **known)
    scores = {key: value.item() for key, value in found.items()}
    truth = {}
    if known:
        truth[f"mode_mass{total}"] = metrics.mode_mass(samples, item["modes"], item["mode_probs"])[0].tolist()
        truth["mode_probs"] = item["mode_probs"][0].tolist()
    return scores, truth


PRECISIONS = {name: getattr(torch, dtype) for name, dtype in PRECISION_DTYPES.items()}  # name -> torch dtype


def evaluate_method(
    method: Method,
    test_set: ItemDataset,
    *,
    counts: tuple[int, ...],
    seed: int,
    device: torch.device,
    warmup: bool = True,
    max_batch: int | None = None,
    options: InferenceOptions | None = None,
    indices: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Sample max(counts) masks per test image (groups of `options.image_batch` images per call,
    timed, warm) and score each group as soon as its samples exist.

    The generator of image i is seeded `seed * 100_003 + i` and drives only that image's draws, so
    results depend neither on the number of ranks, nor on the order images are drawn in, nor on
    how they are grouped. Only the sample call is timed; an image's time is its group's over the
    group's size. `max_batch` is a shortcut for `options.max_batch`. `indices` (default: all)
    scores only those test images (in index order), each with its own generator, so its values
    equal the full run's on those images.

    Returns per-image metric lists (`per_image`), the metrics against the true distribution for
    data with known modes (`truth`: `mode_mass<S>` and `mode_probs` rows), `sample_seconds`
    per image, `samples_per_image`, and the peak memory of the loop (`peak_mb`, `memory_kind`),
    every list in image order.
    """
    options = options or InferenceOptions()
    if max_batch is not None:
        options = dataclasses.replace(options, max_batch=max_batch)
    total = max(counts)
    options.prepare(method, device)
    n = len(test_set)
    if n == 0:
        raise AmbisegError("the test set is empty; check the dataset root, split and limits")
    chosen = list(range(n)) if indices is None else sorted(int(i) for i in indices)
    bad = [i for k, i in enumerate(chosen) if not 0 <= i < n or (k and chosen[k - 1] == i)]
    if not chosen or bad:
        what = f"{bad[0]} is out of range or repeated" if bad else "none given"
        raise ConfigError(f"evaluate_method: indices must be distinct test image indices in 0..{n - 1} ({what})")
    mine = []  # (image index, metrics, truth rows, seconds): numbers only
    with options.autocast(device):
        if warmup:
            first = collate([test_set[0]])["image"].to(device)
            gen = torch.Generator(device).manual_seed(0)
            method.sample(first, min(2, total), generator=gen, max_batch=options.max_batch)
        with PeakMemory(device) as peak:
            mine_only = dist.shard(chosen)  # each rank its share; the generator depends on i only
            for group in _groups(mine_only, options.image_batch):
                items = [collate([test_set[i]]) for i in group]
                images = torch.cat([item["image"] for item in items]).to(device)
                gens = [torch.Generator(device).manual_seed(seed * 100_003 + i) for i in group]
                _sync(device)
                t0 = time.perf_counter()
                out = method.sample(images, total, generator=gens, max_batch=options.max_batch)
                _sync(device)
                seconds = (time.perf_counter() - t0) / len(group)
                for j, (i, item) in enumerate(zip(group, items, strict=True)):
                    if not torch.isfinite(out[j]).all():  # NaN >= 0.5 is False: it would score as an empty mask
                        raise NonFiniteError(
                            f"{method.name} gives non-finite samples for test image {i}; it is not "
                            "scored (are the weights damaged? does the sampler diverge?)"
                        )
                    samples = out[j : j + 1].float().cpu()  # probabilities: SoftShare reads them
                    mine.append((i, *_score(samples, item, counts, total), seconds))
                del out
    parts = dist.gather_objects((mine, peak.peak_mb))
    rows = sorted((row for items, _ in parts for row in items), key=lambda row: row[0])
    peaks = [p for _, p in parts if p is not None]
    per_image: dict[str, list[float]] = {}
    truth: dict[str, list[Any]] = {}
    for _, scores, truth_rows, _ in rows:
        for key, value in scores.items():
            per_image.setdefault(key, []).append(value)
        for key, value in truth_rows.items():
            truth.setdefault(key, []).append(value)
    return {
        "per_image": per_image,
        "truth": truth,
        "sample_seconds": [row[3] for row in rows],
        "samples_per_image": total,
        "peak_mb": max(peaks) if peaks else None,
        "memory_kind": peak.kind,
    }
