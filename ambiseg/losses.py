"""Training-batch checks and Dice terms shared by the training objectives.

Dice here is per sample over all non-batch dims, and 1 when prediction and target are both
empty (the metrics' convention).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .errors import DataError

__all__ = ["unpack_batch", "pick_annotator", "soft_dice", "hard_dice"]


def unpack_batch(batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """`(image [B, C, H, W], masks [B, A, H, W])` as float tensors, after shape checks.

    Raises:
        DataError: a key is missing or the shapes disagree.
    """
    missing = [k for k in ("image", "masks") if k not in batch]
    if missing:
        raise DataError(
            f"training batch lacks {', '.join(repr(k) for k in missing)}; it needs 'image' [B, C, H, W] "
            f"and 'masks' [B, A, H, W], got keys {sorted(batch)}"
        )
    image, masks = batch["image"], batch["masks"]
    if image.ndim != 4:
        raise DataError(f"batch 'image' must be [B, C, H, W], got shape {tuple(image.shape)}")
    if (
        masks.ndim != 4
        or masks.shape[0] != image.shape[0]
        or masks.shape[-2:] != image.shape[-2:]
        or not masks.shape[1]
    ):
        raise DataError(
            f"batch 'masks' must be [B, A, H, W] with A >= 1 and B, H, W of the image "
            f"{tuple(image.shape)}, got shape {tuple(masks.shape)}"
        )
    return image.float(), masks.float()


def pick_annotator(masks: Tensor) -> Tensor:
    """One annotation per image drawn uniformly at random (global RNG): [B, A, H, W] -> [B, 1, H, W]."""
    idx = torch.randint(masks.shape[1], (masks.shape[0],), device=masks.device)
    return masks[torch.arange(masks.shape[0], device=masks.device), idx].unsqueeze(1)


def soft_dice(pred: Tensor, target: Tensor, *, smooth: float = 1.0) -> Tensor:
    """Differentiable Dice [N] of real-valued `pred` against binary `target` (both [N, ...]).

    `(2 sum(p y) + smooth) / (sum(p^2) + sum(y^2) + smooth)` (the V-Net form): equals the Dice of
    binary masks, is at most 1 for any real `pred` and reaches 1 only at `pred == target`, so it
    needs no clamping of predictions that leave [0, 1] (clamping would cut their gradient).
    """
    dims = tuple(range(1, pred.ndim))
    inter = (pred * target).sum(dims)
    return (2 * inter + smooth) / (pred.square().sum(dims) + target.square().sum(dims) + smooth)


def hard_dice(pred: Tensor, target: Tensor, *, threshold: float = 0.5) -> Tensor:
    """Dice [N] of `pred >= threshold` against `target >= 0.5`; no gradient (1 when both are empty)."""
    dims = tuple(range(1, pred.ndim))
    p, y = (pred.detach() >= threshold).float(), (target.detach() >= 0.5).float()
    inter, total = (p * y).sum(dims), p.sum(dims) + y.sum(dims)
    return torch.where(total > 0, 2 * inter / total.clamp_min(1.0), torch.ones_like(total))
