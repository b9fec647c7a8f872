"""Matching metrics: Hungarian-matched IoU (HM-IoU) and maximum Dice matching (MDM).

HM-IoU (Kohl et al. 2019; CCDM/CIMD evaluation code): both sets are tiled to
L = lcm(S, A) members (`np.tile` order: member i of the tiled set is member i mod N), the
assignment minimising the total 1 - IoU is found with `scipy.optimize.linear_sum_assignment`,
and the score is the mean IoU of the L matched pairs. Tiling is done by indexing the S x A
IoU matrix, never by copying masks.

MDM (CIMD's D_max): (1/A) sum_j max_i Dice(S_i, Y_j).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from ..registry import metrics
from .inputs import check_pair
from .overlap import dice_from_counts, iou_from_counts, pair_counts

__all__ = ["hm_iou", "mdm", "hm_iou_from", "mdm_from", "tiled_matching_score"]


def tiled_matching_score(iou: np.ndarray) -> float:
    """Mean matched IoU of one image's `[S, A]` IoU matrix after lcm(S, A) tiling."""
    s, a = iou.shape
    size = math.lcm(s, a)
    tiled = iou[np.ix_(np.arange(size) % s, np.arange(size) % a)]
    rows, cols = linear_sum_assignment(1.0 - tiled)
    return float(tiled[rows, cols].mean())


def hm_iou_from(iou: Tensor) -> Tensor:
    """HM-IoU per image `[B]` from the sample x annotation IoU `[B, S, A]` (one assignment per image)."""
    per_image = iou.detach().to("cpu", torch.float64).numpy()
    return torch.tensor([tiled_matching_score(m) for m in per_image], dtype=iou.dtype, device=iou.device)


def mdm_from(dice: Tensor) -> Tensor:
    """MDM per image `[B]` from the sample x annotation Dice `[B, S, A]`: mean over annotations of the best sample."""
    return dice.amax(dim=1).mean(dim=1)


@metrics.register("hm_iou", better="higher")
def hm_iou(samples: Tensor, annotations: Tensor) -> Tensor:
    """Hungarian-matched IoU of `samples [B, S, H, W]` vs `annotations [B, A, H, W]` -> `[B]`."""
    return hm_iou_from(iou_from_counts(*pair_counts(*check_pair(samples, annotations))))


@metrics.register("mdm", aliases=("d_max",), better="higher")
def mdm(samples: Tensor, annotations: Tensor) -> Tensor:
    """Maximum Dice matching of `samples [B, S, H, W]` vs `annotations [B, A, H, W]` -> `[B]`."""
    return mdm_from(dice_from_counts(*pair_counts(*check_pair(samples, annotations))))
