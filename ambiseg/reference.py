"""Reference rows computed from the annotations alone, so a table shows its own scale.

Each row is scored exactly like a method (`ambiseg.metrics.evaluate`, S samples per image):
- `ref:majority`: the pixel-wise majority of the raters (strictly more than half), every sample;
- `ref:union`: every pixel any rater marked;
- `ref:empty`: an empty mask;
- `ref:raters`: S draws (seeded, with replacement) from the image's own rater masks - annotator
  resampling, a lower bound no model beats in expectation.

A model that does not beat majority, union and empty has not learned; `ref:raters` shows how
far from zero GED can go with S samples.

The plausibility columns are known in advance (docs/metrics.md): every row's masks lie inside the
raters' union, so `Stray` is 0; the masks are bool, so `SoftShare` is 0 (NaN where no rater marks
and the mask is empty). `MissedConsensus` (NaN where a rater marks nothing) is 1 for `ref:empty`
and 0 for `ref:union` and `ref:raters`; for `ref:majority` it is the share of images whose raters
all mark something without a strict majority agreeing on any pixel.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import torch

from . import metrics
from .data.base import ItemDataset
from .results import RECORD_KIND, RECORD_SCHEMA, environment, summarise

__all__ = ["REFERENCES", "reference_samples", "reference_records"]

REFERENCES = ("ref:majority", "ref:union", "ref:empty", "ref:raters")


def reference_samples(masks: torch.Tensor, total: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Each reference row's samples [1, total, H, W] for one image's rater masks [A, H, W]."""
    votes = masks.float().sum(0)
    a = masks.shape[0]
    fixed = {
        "ref:majority": votes > a / 2,
        "ref:union": votes > 0,
        "ref:empty": torch.zeros_like(votes, dtype=torch.bool),
    }
    out = {name: mask.expand(total, *mask.shape)[None] for name, mask in fixed.items()}
    out["ref:raters"] = masks[torch.randint(a, (total,), generator=generator)].bool()[None]
    return out


def reference_records(
    test_set: ItemDataset, *, counts: Sequence[int], device: torch.device, seed: int = 0
) -> list[dict[str, Any]]:
    """One bench-shaped record per reference row (per-image metrics of every test image; no
    training, no timing: those fields are zero and `reference` is true)."""
    generator = torch.Generator().manual_seed(seed)
    per_image: dict[str, dict[str, list[float]]] = {name: {} for name in REFERENCES}
    for i in range(len(test_set)):
        masks = test_set[i]["masks"]
        for name, samples in reference_samples(masks, max(counts), generator).items():
            for key, value in metrics.evaluate(samples, masks[None], counts=tuple(counts)).items():
                per_image[name].setdefault(key, []).append(float(value.item()))
    created = dt.datetime.now(dt.timezone.utc).isoformat()
    env = environment(device)
    return [
        {
            "kind": RECORD_KIND,
            "schema": RECORD_SCHEMA,
            "reference": True,
            "created": created,
            "method": name,
            "seed": seed,
            "counts": list(counts),
            "metrics": summarise(values),
            "per_image": values,
            "timing": {"train_s": 0.0, "sample_s_per_image": 0.0, "samples_per_image": max(counts)},
            "params": 0,
            "env": env,
        }
        for name, values in per_image.items()
    ]
