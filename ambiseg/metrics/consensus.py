"""Dice and IoU of the mean prediction, the single-mask view of a sampler.

The mean prediction is the pixel-wise majority of the binarised samples,
M = (mean_i S_i >= 0.5) (a tie counts as foreground, the `>= 0.5` convention of `inputs`).
`dice` and `iou` are the mean over annotators of Dice(M, Y_j) and IoU(M, Y_j), each 1 when
M and Y_j are both empty.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..registry import metrics
from .inputs import THRESHOLD, check_pair
from .overlap import dice_from_counts, flatten_pair, iou_from_counts

__all__ = ["mean_prediction", "dice", "iou", "consensus_from"]


def mean_prediction(samples: Tensor) -> Tensor:
    """Majority mask (bool) of 0/1 `samples [B, S, ...]` over axis 1, keeping it: vote share >= 0.5.

    Votes are exact: integer sums for bool input, float sums of 0/1 far below 2^24 otherwise.
    """
    votes = samples.sum(dim=1, keepdim=True)
    return votes >= THRESHOLD * samples.shape[1]


def consensus_from(samples: Tensor, annotations: Tensor) -> tuple[Tensor, Tensor]:
    """(Dice, IoU) `[B]` of the majority of flat 0/1 `samples [B, S, P]` against flat `annotations [B, A, P]`."""
    majority = mean_prediction(samples).to(annotations.dtype)
    counts = torch.bmm(majority, annotations.transpose(1, 2)), majority.sum(dim=-1), annotations.sum(dim=-1)
    return dice_from_counts(*counts)[:, 0].mean(dim=1), iou_from_counts(*counts)[:, 0].mean(dim=1)


@metrics.register("dice", better="higher")
def dice(samples: Tensor, annotations: Tensor) -> Tensor:
    """Mean over annotators of Dice(majority of `samples [B, S, H, W]`, Y_j) -> `[B]`."""
    return consensus_from(*(f.values for f in flatten_pair(*check_pair(samples, annotations))))[0]


@metrics.register("iou", better="higher")
def iou(samples: Tensor, annotations: Tensor) -> Tensor:
    """Mean over annotators of IoU(majority of `samples [B, S, H, W]`, Y_j) -> `[B]`."""
    return consensus_from(*(f.values for f in flatten_pair(*check_pair(samples, annotations))))[1]
