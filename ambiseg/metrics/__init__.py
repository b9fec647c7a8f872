"""Metrics for ambiguous segmentation: per-image tensors `[B]` from sample and annotation sets.

Every metric takes `samples [B, S, H, W]` and `annotations [B, A, H, W]` (bool, 0/1 or
probabilities; foreground is `x >= 0.5`) on any device and returns one value per image.
Registered in `ambiseg.registry.metrics` (info `better`: "lower", "higher" or "neither"):
ged, sample_diversity, hm_iou, mdm, combined_sensitivity, diversity_agreement, ci_score, ncc,
dice, iou, and the plausibility of single samples: stray_rate, missed_consensus, soft_share.
`evaluate` computes them all from one matrix product (and one component labelling);
`ged_true`, `mode_mass` and `mode_tv` score samples against a known distribution of weighted
modes. Formulas and sources: docs/metrics.md.
"""

from __future__ import annotations

from .ci import CI_COMBINATIONS, ci_score, combined_sensitivity, diversity_agreement
from .consensus import dice, iou, mean_prediction
from .ged import GEDTerms, ged, ged_terms, sample_diversity
from .inputs import binarize
from .matching import hm_iou, mdm
from .ncc import ncc, pearson
from .overlap import Overlaps, pairwise_dice, pairwise_iou
from .plausibility import SOFT_RANGE, missed_consensus, soft_share, stray_rate
from .suite import better, evaluate
from .truth import ged_true, ged_true_terms, mode_mass, mode_tv

__all__ = [
    "ged",
    "ged_terms",
    "GEDTerms",
    "sample_diversity",
    "hm_iou",
    "mdm",
    "combined_sensitivity",
    "diversity_agreement",
    "ci_score",
    "CI_COMBINATIONS",
    "ncc",
    "pearson",
    "dice",
    "iou",
    "mean_prediction",
    "stray_rate",
    "missed_consensus",
    "soft_share",
    "SOFT_RANGE",
    "evaluate",
    "better",
    "ged_true",
    "ged_true_terms",
    "mode_mass",
    "mode_tv",
    "pairwise_iou",
    "pairwise_dice",
    "Overlaps",
    "binarize",
]
