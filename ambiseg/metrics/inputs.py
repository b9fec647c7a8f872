"""Validation and binarisation of the mask sets every metric takes.

Convention (public evaluation code of Prob. U-Net, PHiSeg, CIMD): a pixel is foreground when
its value is `>= 0.5`; bool masks are used as they are, integer masks (0/1, uint8) and
probabilities go through the same threshold.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ConfigError, DataError

__all__ = ["binarize", "check_mask_set", "check_pair", "THRESHOLD"]

THRESHOLD = 0.5


def binarize(masks: Tensor) -> Tensor:
    """Foreground mask `masks >= 0.5` (bool, same shape); bool input is returned as is."""
    return masks if masks.dtype == torch.bool else masks >= THRESHOLD


def check_mask_set(masks: object, name: str, axes: str) -> Tensor:
    """Check one mask set is a real-valued `[B, N, H, W]` tensor without NaN; returns it.

    `axes` names the axes for messages, e.g. `"[B, S, H, W]"`.
    """
    if not isinstance(masks, Tensor):
        raise ConfigError(f"{name} must be a torch.Tensor {axes}, got {type(masks).__name__}")
    if masks.dim() != 4:
        raise ConfigError(
            f"{name} must be {axes} (4 dims), got shape {tuple(masks.shape)}; "
            f"add the missing axes with .unsqueeze() (one image: [None], one mask: [:, None])"
        )
    if masks.is_complex():
        raise ConfigError(f"{name} must be bool, integer or real floating masks, got {masks.dtype}")
    if 0 in masks.shape:
        raise ConfigError(f"{name} {axes} has an empty axis: shape {tuple(masks.shape)}")
    if masks.is_floating_point() and torch.isnan(masks).any():
        raise DataError(
            f"{name} contains NaN values (shape {tuple(masks.shape)}); masks must be 0/1 or probabilities in [0, 1]"
        )
    return masks


def check_pair(
    first: object,
    second: object,
    *,
    names: tuple[str, str] = ("samples", "annotations"),
    axes: tuple[str, str] = ("[B, S, H, W]", "[B, A, H, W]"),
) -> tuple[Tensor, Tensor]:
    """Validate two mask sets of the same images (default: samples and annotations); binarise both.

    The second set is moved to the first one's device. Raises `ConfigError` naming both shapes
    when B, H or W disagree.
    """
    first = check_mask_set(first, names[0], axes[0])
    second = check_mask_set(second, names[1], axes[1])
    f, s = tuple(first.shape), tuple(second.shape)
    for axis, label in ((0, "B (images)"), (2, "H"), (3, "W")):
        if f[axis] != s[axis]:
            raise ConfigError(
                f"{names[0]} {axes[0]} = {f} and {names[1]} {axes[1]} = {s} disagree on {label}; "
                f"pass the {names[1]} of the same images at the same resolution"
            )
    return binarize(first), binarize(second.to(first.device))
