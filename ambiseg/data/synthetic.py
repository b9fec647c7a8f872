"""`synthetic`: lesions with a known distribution over plausible masks, generated from a seed.

Each image shows one irregular bright lesion with a fainter halo, and a small faint satellite
blob, on a smooth textured background with noise. Its true distribution has K = 4 modes:

  0 "tight"     the bright core only            p = (1 - p_empty - p_sat) * (1 - halo)
  1 "loose"     core plus halo                  p = (1 - p_empty - p_sat) * halo
  2 "satellite" loose lesion plus the satellite p_sat   in [0.06, 0.14] (mean 0.10)
  3 "empty"     the annotator saw nothing       p_empty in [0.05, 0.20]

The probabilities are read off the image: a brighter halo makes "loose" likelier, a lower
lesion contrast makes "empty" likelier, a brighter satellite makes "satellite" likelier. The
A annotator masks are drawn i.i.d. from the modes, so annotators genuinely disagree and a
single deterministic prediction cannot match them, while the image carries all the
information a stochastic model needs. An item depends only on (seed, split, index).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from ..errors import ConfigError
from ..registry import datasets
from .base import AnnotatedDataset
from .validate import MAX_ANNOTATORS, MAX_ITEMS, MAX_SIDE, check_count, check_data_seed, check_split

__all__ = ["MODE_NAMES", "DEFAULT_SIZES", "Example", "make_example", "SyntheticDataset"]

MODE_NAMES = ("tight", "loose", "satellite", "empty")
DEFAULT_SIZES = (200, 40, 40)
_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}


@dataclasses.dataclass(frozen=True)
class Example:
    """One generated image and its truth."""

    image: np.ndarray  # [H, W] float32 in [0, 1]
    modes: np.ndarray  # [K, H, W] uint8 0/1, in MODE_NAMES order
    mode_probs: np.ndarray  # [K] float64, sums to 1


def _lesion(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, size: int) -> dict[str, Any]:
    """Irregular lesion: radial profile r0 (1 + sum_k a_k cos(k theta + phi_k)), k = 2..4."""
    cy, cx = rng.uniform(0.35, 0.65, size=2) * size
    r0 = max(1.6, rng.uniform(0.09, 0.14) * size)
    amps = rng.uniform(0.0, 0.08, size=3)
    phases = rng.uniform(0.0, 2 * math.pi, size=3)
    grow = rng.uniform(1.25, 1.45)  # loose boundary = grow x tight boundary
    theta = np.arctan2(yy - cy, xx - cx)
    radius = r0 * (1 + sum(a * np.cos(k * theta + p) for a, k, p in zip(amps, (2, 3, 4), phases, strict=True)))
    rel = np.hypot(yy - cy, xx - cx) / radius  # 1 on the tight boundary
    return {"center": (cy, cx), "reach": r0 * (1 + amps.sum()) * grow, "rel": rel, "grow": grow}


def _satellite(
    rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, size: int, center: tuple[float, float], reach: float
) -> np.ndarray:
    """Small elliptic blob clear of the lesion's loose boundary, fully inside the image."""
    radius = max(1.2, rng.uniform(0.045, 0.065) * size)
    dist = reach + radius + rng.uniform(0.04, 0.10) * size
    angles = rng.permutation(np.linspace(0, 2 * math.pi, 32, endpoint=False))
    sy, sx = center
    for angle in angles:
        sy, sx = center[0] + dist * math.sin(angle), center[1] + dist * math.cos(angle)
        if radius + 1 <= sy <= size - 2 - radius and radius + 1 <= sx <= size - 2 - radius:
            break
    stretch = rng.uniform(0.8, 1.25)
    return ((yy - sy) / radius) ** 2 + ((xx - sx) / (radius * stretch)) ** 2 <= 1.0


def make_example(seed: int, split: str, index: int, *, size: int = 64) -> Example:
    """Generate image `index` of `split` for `seed`: the image, its K = 4 modes and their probabilities."""
    rng = np.random.default_rng([seed, _SPLIT_CODE[split], index])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    lesion = _lesion(rng, yy, xx, size)
    rel, grow = lesion["rel"], lesion["grow"]
    tight = rel <= 1.0
    loose = rel <= grow
    satellite = _satellite(rng, yy, xx, size, lesion["center"], lesion["reach"])

    contrast = rng.uniform(0.25, 0.45)  # core brightness above background
    halo = rng.uniform(0.3, 0.7)  # halo brightness relative to the core
    faint = rng.uniform(0.10, 0.16)  # satellite brightness above background
    ring = np.clip((grow - rel) / (grow - 1.0), 0.0, 1.0)  # 1 at the tight boundary, 0 at the loose one
    layer = np.where(tight, contrast, contrast * halo * (0.5 + 0.5 * ring) * loose)
    layer = layer + faint * satellite
    layer = gaussian_filter(layer, sigma=max(0.5, size / 100))

    texture = gaussian_filter(rng.normal(size=(size, size)), sigma=size / 16)
    texture *= 0.045 / max(texture.std(), 1e-8)
    image = rng.uniform(0.25, 0.35) + texture + layer + rng.normal(0.0, 0.03, size=(size, size))

    p_empty = 0.05 + 0.15 * (0.45 - contrast) / 0.20
    p_sat = 0.06 + 0.08 * (faint - 0.10) / 0.06
    rest = 1.0 - p_empty - p_sat
    probs = np.array([rest * (1 - halo), rest * halo, p_sat, p_empty])
    modes = np.stack([tight, loose, loose | satellite, np.zeros_like(tight)]).astype(np.uint8)
    return Example(image=np.clip(image, 0, 1).astype(np.float32), modes=modes, mode_probs=probs / probs.sum())


@datasets.register("synthetic", description="built-in lesions with a known mask distribution (no files)")
class SyntheticDataset(AnnotatedDataset):
    """The built-in dataset: images and annotators generated on the fly (see the module docstring).

    Items add `modes` [K, H, W] uint8 and `mode_probs` [K] float32 (K = 4, summing to 1) to the
    usual keys, so metrics can be taken against the true distribution.
    """

    def __init__(
        self,
        *,
        split: str = "train",
        seed: int = 0,
        size: int = 64,
        num_annotators: int = 4,
        sizes: tuple[int, int, int] = DEFAULT_SIZES,
        limit: int | None = None,
    ) -> None:
        """
        Args:
            split: "train", "val", "test" or "all" (the three, in that order).
            seed: base seed; item i of a split depends only on (seed, split, i).
            size: image side in pixels (>= 16).
            num_annotators: A, annotator masks drawn per image.
            sizes: number of images in train, val and test.
            limit: keep only the first `limit` images of the split.
        """
        self.name, self.split = "synthetic", check_split(split)
        self.seed, self.size = self._check(seed=seed, size=size, num_annotators=num_annotators, sizes=sizes)
        self.in_channels, self.image_shape, self.num_annotators = 1, (size, size), int(num_annotators)
        parts = ("train", "val", "test") if split == "all" else (split,)
        self.keys = [(part, i) for part in parts for i in range(int(sizes[_SPLIT_CODE[part]]))]
        if limit is not None:
            if limit < 1:
                raise ConfigError(f"synthetic: limit must be a positive number of items, got {limit}")
            self.keys = self.keys[:limit]
        if not self.keys:
            raise ConfigError(
                f"synthetic: split '{split}' has no images (sizes={tuple(sizes)}); give it a positive size"
            )
        self.ids = [f"synthetic-{part}-{i:05d}" for part, i in self.keys]
        self.groups = list(self.ids)  # every image is its own "patient"
        self.mode_names = MODE_NAMES

    @staticmethod
    def _check(*, seed: int, size: int, num_annotators: int, sizes: Sequence[int]) -> tuple[int, int]:
        """The seed and size, after checking every option against its bounds."""
        check_data_seed(seed, where="synthetic: seed")
        if size < 16:
            raise ConfigError(f"synthetic: size must be at least 16 pixels, got {size}")
        check_count(size, 16, MAX_SIDE, where="synthetic: size (pixels)")
        check_count(num_annotators, 1, MAX_ANNOTATORS, where="synthetic: num_annotators")
        if len(sizes) != 3 or min(sizes) < 0:
            raise ConfigError(
                f"synthetic: sizes must be three non-negative counts (train, val, test), got {tuple(sizes)}"
            )
        for count in sizes:
            check_count(count, 0, MAX_ITEMS, where="synthetic: each of sizes")
        return int(seed), int(size)

    def _load(self, index: int) -> dict[str, Any]:
        part, i = self.keys[index]
        example = make_example(self.seed, part, i, size=self.size)
        # annotators use their own stream so changing A leaves image and modes unchanged
        rng = np.random.default_rng([self.seed, _SPLIT_CODE[part], i, 1])
        picks = rng.choice(len(MODE_NAMES), size=self.num_annotators, p=example.mode_probs)
        return {
            "image": torch.from_numpy(example.image)[None],
            "masks": torch.from_numpy(example.modes[picks]),
            "modes": torch.from_numpy(example.modes),
            "mode_probs": torch.from_numpy(example.mode_probs.astype(np.float32)),
            "id": self.ids[index],
            "group": self.groups[index],
        }
