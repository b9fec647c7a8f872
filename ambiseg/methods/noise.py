"""Standard-normal prior over the mask, the source of SFM-alone and of diffusion models."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..interfaces import Prior
from ..registry import priors

__all__ = ["NoisePrior"]


@priors.register("noise")
class NoisePrior(Prior):
    """x0 ~ N(0, I) of shape [channels, H, W], independent of the image."""

    draws = "noise"

    def __init__(self, channels: int = 1) -> None:
        super().__init__()
        self.channels = channels

    def condition(self, images: Tensor) -> Any:
        return images.shape[0], images.shape[-2:], images.device, images.dtype

    def sample(self, state: Any, num_samples: int, *, generator: torch.Generator | None = None) -> Tensor:
        b, (h, w), device, dtype = state
        return torch.randn(b, num_samples, self.channels, h, w, device=device, dtype=dtype, generator=generator)
