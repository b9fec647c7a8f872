"""Benchmark presets: how much data, which method preset, how many test images.

`smoke` proves the pipeline in seconds, `cpu` is the default (the three headline methods in
well under 15 minutes on 2 CPU cores on the synthetic data), `paper` uses each method's
paper preset for the dataset (`paper-lidc`, `paper-isic3`) and full splits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError, closest

__all__ = ["BenchPreset", "BENCH_PRESETS", "bench_preset"]


@dataclass(frozen=True)
class BenchPreset:
    """Data options per dataset (`common` to every split, then per split), the method preset,
    and evaluation sizes."""

    method_preset: str
    data: dict[str, dict[str, dict[str, Any]]]  # dataset -> "common" | split -> dataset options
    untrained_samples: int = 16
    warmup: bool = True
    flops: bool = True
    extra: dict[str, Any] = field(default_factory=dict)
    # e.g. lidc -> "cpu-lidc", or several, most specific first
    dataset_method_presets: dict[str, str | tuple[str, ...]] = field(default_factory=dict)

    def method_preset_for(self, dataset: str) -> str:
        return self.method_preset.format(dataset={"isic3": "isic3"}.get(dataset, "lidc"))

    def method_presets_for(self, dataset: str) -> tuple[str, ...]:
        """Method presets to try, most specific first: a recipe without the dataset's own preset
        (e.g. `cpu-lidc`) uses the general one (`cpu`)."""
        general = self.method_preset_for(dataset)
        specific = self.dataset_method_presets.get(dataset) or ()
        return (*((specific,) if isinstance(specific, str) else specific), general)

    def data_options(self, dataset: str, split: str) -> dict[str, Any]:
        """Options for `split` of `dataset`; split "all" (a whole dataset) gets the common ones only."""
        options = self.data.get(dataset, {})
        return {**options.get("common", {}), **options.get(split, {})}


BENCH_PRESETS = {
    "smoke": BenchPreset(
        method_preset="smoke",
        untrained_samples=4,
        data={
            "synthetic": {"common": {"size": 32, "sizes": (16, 4, 4)}},
            "lidc": {"train": {"limit": 16}, "val": {"limit": 4}, "test": {"limit": 4}},
            "isic3": {"train": {"limit": 8}, "val": {"limit": 2}, "test": {"limit": 2}},
        },
    ),
    "cpu": BenchPreset(
        method_preset="cpu",
        dataset_method_presets={"lidc": "cpu-lidc"},
        data={
            "synthetic": {"common": {"size": 64, "sizes": (400, 8, 16)}},
            # LIDC: the central 64 px of the 128 px crops (0.15% of the lesion pixels fall
            # outside), every training slice, 48 validation and 500 test slices
            "lidc": {"common": {"crop": 64}, "val": {"limit": 48}, "test": {"limit": 500}},
            "isic3": {"train": {"limit": 150}, "val": {"limit": 8}, "test": {"limit": 16}},
        },
    ),
    # lidc-v2 (ambiseg.protocols): each method's `cpu-lidc-v2` preset, which fills the 40-minute
    # budget (`cpu-lidc` where a method has none yet), checkpoints chosen on 200 validation slices
    "cpu-v2": BenchPreset(
        method_preset="cpu",
        dataset_method_presets={"lidc": ("cpu-lidc-v2", "cpu-lidc")},
        data={"lidc": {"common": {"crop": 64}, "val": {"limit": 200}, "test": {"limit": 500}}},
    ),
    # the papers' settings: LIDC crops are 128 px as stored; ISIC3 images are resized to 256 px
    "paper": BenchPreset(method_preset="paper-{dataset}", data={"isic3": {"common": {"size": 256}}}),
}


def bench_preset(name: str) -> BenchPreset:
    if name not in BENCH_PRESETS:
        raise ConfigError(f"unknown preset '{name}'{closest(name, BENCH_PRESETS)}; presets: {', '.join(BENCH_PRESETS)}")
    return BENCH_PRESETS[name]
