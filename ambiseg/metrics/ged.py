"""Generalised energy distance (GED) and sample diversity.

GED^2 = 2 E[d(S, Y)] - E[d(S, S')] - E[d(Y, Y')] with d = 1 - IoU (Kohl et al. 2018; PHiSeg
code), every expectation over all ordered pairs including self-pairs (a V-statistic), no
square root, as reported in ../shared/PAPER.md "Metrics". The sample diversity E[d(S, S')]
is reported beside GED because diversity alone can lower GED.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from ..registry import metrics
from .inputs import check_pair
from .overlap import Overlaps

__all__ = ["GEDTerms", "ged_terms", "ged", "sample_diversity", "ged_terms_from"]


@dataclasses.dataclass(frozen=True)
class GEDTerms:
    """The three expectations of GED and GED itself, each per image `[B]`."""

    cross: Tensor  # E[d(S, Y)]
    sample_diversity: Tensor  # E[d(S, S')]
    annotation_diversity: Tensor  # E[d(Y, Y')]
    ged: Tensor  # 2 cross - sample_diversity - annotation_diversity


def ged_terms_from(overlaps: Overlaps, weights: Tensor | None = None) -> GEDTerms:
    """GED terms from precomputed counts.

    Args:
        overlaps: counts of samples against a reference set of A masks.
        weights: `[B, A]` probabilities of the reference masks (rows sum to 1), for GED
            against a known mixture; `None` weighs every annotation 1/A.
    """
    iou_sy = overlaps.iou_sy
    if weights is None:
        b, _, a = iou_sy.shape
        weights = torch.full((b, a), 1.0 / a, dtype=iou_sy.dtype, device=iou_sy.device)
    weights = weights.to(iou_sy)
    cross = torch.einsum("bsa,ba->b", 1 - iou_sy, weights) / iou_sy.shape[1]
    samples = (1 - overlaps.iou_ss).mean(dim=(1, 2))
    references = torch.einsum("ba,bac,bc->b", weights, 1 - overlaps.iou_yy, weights)
    return GEDTerms(cross, samples, references, 2 * cross - samples - references)


def ged_terms(samples: Tensor, annotations: Tensor) -> GEDTerms:
    """GED and its three terms for `samples [B, S, H, W]` vs `annotations [B, A, H, W]`."""
    s, a = check_pair(samples, annotations)
    (overlaps,) = Overlaps.of(s, a)
    return ged_terms_from(overlaps)


@metrics.register("ged", better="lower")
def ged(samples: Tensor, annotations: Tensor) -> Tensor:
    """Squared generalised energy distance per image `[B]` (lower is better); see `ged_terms`."""
    return ged_terms(samples, annotations).ged


@metrics.register("sample_diversity", aliases=("diversity",), better="neither")
def sample_diversity(samples: Tensor, annotations: Tensor) -> Tensor:
    """E[1 - IoU(S, S')] over all ordered sample pairs, self-pairs included, per image `[B]`.

    `annotations` are only validated (same images and size), so the signature matches the
    other metrics.
    """
    return ged_terms(samples, annotations).sample_diversity
