"""Reference rows computed from the annotations alone, so a table shows its own scale.

Each row is scored exactly like a method (`ambiseg.metrics.evaluate`, S samples per image):
- `ref:majority`: the pixel-wise majority of the raters (strictly more than half), every sample;
- `ref:union`: every pixel any rater marked;
- `ref:empty`: an empty mask;
- `ref:raters`: S draws (seeded, with replacement) from the image's own rater masks - annotator
  resampling, a lower bound no model beats in expectation;
- `ref:truth` (only on data with a known distribution, e.g. `synthetic`): S draws from the true
  modes with their probabilities - a perfect model. Its GED against the A raters is what the
  metric gives the best possible sampler, so a deterministic row that beats the models but not
  `ref:truth` wins by the models' fault, not by the metric's nature (docs/metrics.md).

On data with a known distribution every row is also scored against it (TrueGED, ModeTV).

A model that does not beat majority, union and empty has not learned; `ref:raters` shows how
far from zero GED can go with S samples.

The plausibility columns are known in advance (docs/metrics.md): every row's masks lie inside the
raters' union, so `Stray` is 0; the masks are bool, so `SoftShare` is 0 (NaN where no rater marks
and the mask is empty). `MissedConsensus` (NaN where a rater marks nothing) is 1 for `ref:empty`
and 0 for `ref:union` and `ref:raters`; for `ref:majority` it is the share of images whose raters
all mark something without a strict majority agreeing on any pixel.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from . import metrics
from .data.base import ItemDataset
from .results import environment, make_record

__all__ = ["REFERENCES", "reference_samples", "reference_records"]

REFERENCES = ("ref:majority", "ref:union", "ref:empty", "ref:raters", "ref:truth")


def reference_samples(
    masks: torch.Tensor,
    total: int,
    generator: torch.Generator,
    *,
    modes: torch.Tensor | None = None,
    probs: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Each reference row's samples [1, total, H, W] for one image's rater masks [A, H, W]; with the
    true `modes` [K, H, W] and their `probs` [K], also `ref:truth`."""
    votes = masks.float().sum(0)
    a = masks.shape[0]
    fixed = {
        "ref:majority": votes > a / 2,
        "ref:union": votes > 0,
        "ref:empty": torch.zeros_like(votes, dtype=torch.bool),
    }
    out = {name: mask.expand(total, *mask.shape)[None] for name, mask in fixed.items()}
    out["ref:raters"] = masks[torch.randint(a, (total,), generator=generator)].bool()[None]
    if modes is not None and probs is not None:
        picks = torch.multinomial(probs.double(), total, replacement=True, generator=generator)
        out["ref:truth"] = modes[picks].bool()[None]
    return out


def reference_records(
    test_set: ItemDataset,
    *,
    counts: Sequence[int],
    device: torch.device,
    seed: int = 0,
    dataset: str = "",
    preset: str = "",
    **fields: Any,
) -> list[dict[str, Any]]:
    """One bench-shaped record per reference row (per-image metrics of every test image; no
    training, no timing: those fields are zero and `reference` is true). `fields` (the data
    spec, the protocol, ...) go into every row."""
    generator = torch.Generator().manual_seed(seed)
    per_image: dict[str, dict[str, list[float]]] = {}
    for i in range(len(test_set)):
        item = test_set[i]
        masks, truth = item["masks"], {k: item[k] for k in ("modes", "mode_probs") if k in item}
        rows = reference_samples(masks, max(counts), generator, modes=truth.get("modes"), probs=truth.get("mode_probs"))
        known = {"modes": truth["modes"][None], "probs": truth["mode_probs"][None]} if truth else {}
        for name, samples in rows.items():
            for key, value in metrics.evaluate(samples, masks[None], counts=tuple(counts), **known).items():
                per_image.setdefault(name, {}).setdefault(key, []).append(float(value.item()))
    env = environment(device)
    timing = {"train_s": 0.0, "sample_s_per_image": 0.0, "samples_per_image": max(counts)}
    return [
        make_record(
            method=name,
            dataset=dataset,
            preset=preset,
            seed=seed,
            counts=counts,
            per_image=values,
            timing=dict(timing),
            params=0,
            env=env,
            reference=True,
            **fields,
        )
        for name, values in per_image.items()
    ]
