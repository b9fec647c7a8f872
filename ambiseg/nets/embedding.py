"""Sinusoidal embedding of a continuous time (Vaswani et al., 2017; used by DDPM and flow U-Nets)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["SinusoidalEmbedding"]


class SinusoidalEmbedding(nn.Module):
    """t [N] -> [N, dim]: sin and cos of `scale * t` at `dim / 2` geometric frequencies in [1e-4, 1].

    `scale` stretches a time in [0, 1] over the range the frequencies resolve (1000 maps it onto
    the step index of a 1000-step diffusion, where these embeddings come from).
    """

    freqs: Tensor  # registered buffer [dim / 2]

    def __init__(self, dim: int, *, scale: float = 1000.0, max_period: float = 10000.0) -> None:
        super().__init__()
        if dim < 4 or dim % 2:
            raise ValueError(f"sinusoidal embedding dim must be even and >= 4, got {dim}")
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / (half - 1))
        self.register_buffer("freqs", freqs, persistent=False)
        self.dim, self.scale = dim, float(scale)

    def forward(self, t: Tensor) -> Tensor:
        args = (t.float() * self.scale)[:, None] * self.freqs[None, :]
        return torch.cat([args.sin(), args.cos()], dim=-1)
