"""Plausibility of single samples: stray components, missed consensus and soft pixels.

GED, HM-IoU and the other set metrics compare the samples with the raters as distributions, so a
sampler can score well on them while some of its samples are masks no rater would draw. These
three metrics look at each sample on its own, against the raters of its image; each is 0 (where
defined) for samples drawn from the raters' own masks, and lower is better:

- `stray_rate`: fraction of samples holding a stray component, an 8-connected foreground
  component (within the sample's 2-D mask) that shares no pixel with the union of the raters'
  masks. Where no rater marks anything, every component is stray.
- `missed_consensus`: on an image where every rater marks at least one pixel, the fraction of
  empty samples; NaN (undefined) on any other image, where an empty sample is a rater's answer.
- `soft_share`: the samples' probabilities, not binarised. With U_s the pixels where sample s
  is foreground or any rater marks, the share of soft pixels (0.1 < p < 0.9) pooled over the
  samples, sum_s |soft ∩ U_s| / sum_s |U_s|; NaN when every U_s is empty. Bool and 0/1 samples
  give 0. Comparisons are made in the samples' precision (float32 at least).

Foreground is `x >= 0.5` (`inputs.binarize`). Formulas and examples: docs/metrics.md.
"""

from __future__ import annotations

import numpy as np
import torch
from einops import rearrange
from scipy import ndimage
from torch import Tensor

from ..registry import metrics
from .inputs import check_pair
from .overlap import flatten_pair

__all__ = [
    "stray_rate",
    "missed_consensus",
    "soft_share",
    "stray_rate_from",
    "missed_consensus_from",
    "soft_share_from",
    "covered_from",
    "SOFT_RANGE",
]

SOFT_RANGE = (0.1, 0.9)  # a probability strictly inside is "soft"
# 3x3x3 neighbourhood of `ndimage.label` on a [N, H, W] stack: the 8 neighbours within a slice
# and none in the slices before or after, so one call labels every 2-D sample on its own
_IN_SLICE = np.zeros((3, 3, 3), dtype=bool)
_IN_SLICE[1] = True


def _box(*masks: Tensor) -> tuple[slice, slice] | None:
    """Rows and columns of the bounding box of all foreground of bool `masks [B, N, H, W]`, the whole
    batch together (pixels outside it are background in every mask); None when there is none."""
    foreground = torch.stack([m.view(torch.uint8).amax(dim=(0, 1)) for m in masks]).amax(dim=0)  # [H, W]
    rows, cols = foreground.amax(dim=1).nonzero().flatten(), foreground.amax(dim=0).nonzero().flatten()
    if rows.numel() == 0:
        return None
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


def stray_rate_from(samples: Tensor, union: Tensor) -> Tensor:
    """Stray rate `[B]` (float32) of bool `samples [B, S, H, W]` against the raters' bool `union [B, H, W]`.

    Every sample of the batch is labelled in one `ndimage.label` call (on the CPU), inside the
    bounding box of all the samples' foreground, which holds every component whole.
    """
    b, s = samples.shape[:2]
    box = _box(samples)
    if box is None:
        return torch.zeros(b, dtype=torch.float32, device=samples.device)
    stack = rearrange(samples[:, :, box[0], box[1]], "b s h w -> (b s) h w").contiguous().cpu().numpy()
    labels, count = ndimage.label(stack, structure=_IN_SLICE)
    where = np.flatnonzero(stack)  # the foreground pixels, each once (bool: far faster than on labels)
    label = labels.reshape(-1)[where]
    sample, pixel = np.divmod(where, stack.shape[1] * stack.shape[2])  # index into (b s) and into (h w)
    inside = rearrange(union[:, box[0], box[1]], "b h w -> b (h w)").cpu().numpy()[sample // s, pixel]
    touched = np.bincount(label[inside], minlength=count + 1) > 0  # a label with a pixel in the union
    stray = np.zeros(b * s, dtype=bool)
    stray[sample[~touched[label]]] = True  # the samples holding a pixel of an untouched label
    return torch.from_numpy(stray.reshape(b, s).mean(axis=1)).to(samples.device, torch.float32)


def missed_consensus_from(size_s: Tensor, size_y: Tensor) -> Tensor:
    """Missed consensus `[B]` (float32) from the foreground sizes of samples `[B, S]` and raters `[B, A]`."""
    missed = (size_s == 0).float().mean(dim=1)
    return torch.where((size_y > 0).all(dim=1), missed, torch.full_like(missed, float("nan")))


def covered_from(samples: Tensor, annotations: Tensor) -> Tensor:
    """sum_s |U_s| `[B]` (float64, exact) from flat 0/1 `samples [B, S, P]` and `annotations [B, A, P]`
    of the same crop (`overlap.flatten`): sum_s |S_s| + S |U| - sum_s |S_s & U|, one matrix product."""
    union = annotations.amax(dim=1)  # [B, P]
    inside = torch.bmm(samples, union[:, :, None])[..., 0]  # |S_s & U| [B, S]
    return (samples.sum(dim=2) - inside).double().sum(dim=1) + samples.shape[1] * union.sum(dim=1).double()


def soft_share_from(probs: Tensor, samples: Tensor, union: Tensor, covered: Tensor) -> Tensor:
    """Soft share `[B]` (float32) of `probs [B, S, H, W]`, their bool binarisation `samples`, the raters'
    bool `union [B, H, W]` and `covered [B]` = sum_s |U_s| (`covered_from`).

    Soft pixels are counted inside the bounding box of the batch's foreground, which holds every U_s;
    integer samples have no value strictly between 0.1 and 0.9, so theirs are not counted at all.
    """
    soft = torch.zeros_like(covered)
    box = _box(samples, union[:, None]) if probs.is_floating_point() else None
    if box is not None:
        p = probs[:, :, box[0], box[1]]
        p = p.float() if p.itemsize < 4 else p  # half precision compared in float32
        region = samples[:, :, box[0], box[1]] | union[:, None, box[0], box[1]]  # U_s
        soft = (region & (p > SOFT_RANGE[0]) & (p < SOFT_RANGE[1])).sum(dim=(1, 2, 3)).to(covered)
    share = (soft / covered.clamp_min(1)).float()
    return torch.where(covered > 0, share, torch.full_like(share, float("nan")))


@metrics.register("stray_rate", better="lower")
def stray_rate(samples: Tensor, annotations: Tensor) -> Tensor:
    """Fraction of `samples [B, S, H, W]` with a component outside every rater's mask `[B, A, H, W]` -> `[B]`."""
    s, a = check_pair(samples, annotations)
    return stray_rate_from(s, a.any(dim=1))


@metrics.register("missed_consensus", better="lower")
def missed_consensus(samples: Tensor, annotations: Tensor) -> Tensor:
    """Fraction of empty `samples [B, S, H, W]` where every rater `[B, A, H, W]` marks something -> `[B]`, else NaN."""
    s, a = check_pair(samples, annotations)
    return missed_consensus_from(s.sum(dim=(2, 3)), a.sum(dim=(2, 3)))


@metrics.register("soft_share", better="lower")
def soft_share(samples: Tensor, annotations: Tensor) -> Tensor:
    """Share of soft pixels (0.1 < p < 0.9) of probabilities `samples [B, S, H, W]` in their foreground or
    the raters' union (`annotations [B, A, H, W]`), pooled over the samples -> `[B]`; NaN when none."""
    s, a = check_pair(samples, annotations)
    flat_s, flat_a = flatten_pair(s, a)
    return soft_share_from(samples, s, a.any(dim=1), covered_from(flat_s.values, flat_a.values))
