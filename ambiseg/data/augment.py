"""Joint image/mask augmentation: random flips and a small rotation, applied identically to both.

The image is rotated bilinearly, the masks with nearest neighbour so they stay binary. The
randomness comes from torch's generator (pass one for reproducibility); DataLoader workers
get distinct torch seeds, so workers do not repeat each other's draws.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["joint_augment"]


def joint_augment(
    image: Tensor,
    masks: Tensor,
    *,
    hflip: bool = True,
    vflip: bool = True,
    max_degrees: float = 15.0,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Flip each axis with probability 1/2 and rotate by an angle ~ U(-max_degrees, max_degrees).

    Args:
        image: [C, H, W] float.
        masks: [A, H, W] uint8 0/1 (or bool).
        hflip, vflip: allow left-right / up-down flips.
        max_degrees: largest rotation; 0 disables rotation. Corners are filled with 0.
        generator: torch generator for the draws (default: torch's global one).

    Returns:
        (image [C, H, W], masks [A, H, W]) with the same dtypes.
    """
    draws = torch.rand(3, generator=generator)
    dims = [d for d, on in ((-1, hflip and draws[0] < 0.5), (-2, vflip and draws[1] < 0.5)) if on]
    if dims:
        image, masks = image.flip(dims), masks.flip(dims)
    if max_degrees > 0:
        from torchvision.transforms import InterpolationMode  # here: importing torchvision takes seconds
        from torchvision.transforms.functional import rotate

        angle = float((2 * draws[2] - 1) * max_degrees)
        image = rotate(image, angle, interpolation=InterpolationMode.BILINEAR, fill=0.0)
        dtype = masks.dtype
        masks = rotate(masks.to(torch.uint8), angle, interpolation=InterpolationMode.NEAREST, fill=0).to(dtype)
    return image, masks
