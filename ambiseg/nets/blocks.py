"""Convolutional building blocks of the time-conditioned U-Net.

Weight-standardised convolutions pair with GroupNorm (Qiao et al., 2019); a ResNet block takes
a per-sample embedding (time, optionally plus a conditioning vector) as a scale and shift of
its first normalised activation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

__all__ = ["WSConv2d", "ResBlock", "Downsample", "Upsample"]


class WSConv2d(nn.Conv2d):
    """Conv2d whose filters are standardised to zero mean and unit variance before use."""

    def forward(self, x: Tensor) -> Tensor:
        eps = 1e-5 if x.dtype == torch.float32 else 1e-3
        w = self.weight
        mean = w.mean(dim=(1, 2, 3), keepdim=True)
        var = w.var(dim=(1, 2, 3), keepdim=True, unbiased=False)
        return F.conv2d(
            x, (w - mean) * torch.rsqrt(var + eps), self.bias, self.stride, self.padding, self.dilation, self.groups
        )


class ResBlock(nn.Module):
    """Two (WS-conv 3x3, GroupNorm, SiLU) layers and a residual; the embedding scales and shifts
    the first normalised activation: `norm(x) * (1 + scale) + shift`.

    Shapes: `x` [N, in_channels, H, W], `emb` [N, emb_dim] -> [N, out_channels, H, W].
    """

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, *, groups: int = 8) -> None:
        super().__init__()
        self.conv1 = WSConv2d(in_channels, out_channels, 3, padding=1)
        self.norm1 = nn.GroupNorm(groups, out_channels)
        self.conv2 = WSConv2d(out_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_channels)
        self.to_scale_shift = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * out_channels))
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        scale, shift = rearrange(self.to_scale_shift(emb), "n (two c) -> two n c 1 1", two=2)
        h = F.silu(self.norm1(self.conv1(x)) * (1 + scale) + shift)
        h = F.silu(self.norm2(self.conv2(h)))
        return h + self.skip(x)


class Downsample(nn.Module):
    """Halve H and W without losing pixels: space-to-depth (2x2 -> 4 channels each), then 1x1 conv."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(4 * in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(rearrange(x, "n c (h p) (w q) -> n (c p q) h w", p=2, q=2))


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour upsampling, then a 3x3 conv."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
