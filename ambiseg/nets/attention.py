"""Self-attention over the pixels of a feature map, as residual blocks with a pre-norm.

`LinearAttention` (Shen et al., 2021: softmax on queries over features and on keys over
pixels) costs O(H W) and runs at every U-Net level; `FullAttention` (softmax attention) costs
O((H W)^2) and runs only at the coarsest resolution.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, einsum, nn

__all__ = ["LinearAttention", "FullAttention"]


class _PixelAttention(nn.Module, ABC):
    """Shared parts: pre-norm, 1x1 q/k/v projection, 1x1 output projection (+ optional norm), residual."""

    def __init__(self, channels: int, *, heads: int = 4, head_dim: int = 32) -> None:
        super().__init__()
        hidden = heads * head_dim
        self.heads, self.head_dim = heads, head_dim
        self.norm = nn.GroupNorm(1, channels)
        self.to_qkv = nn.Conv2d(channels, 3 * hidden, 1, bias=False)
        self.to_out = nn.Conv2d(hidden, channels, 1)
        self.out_norm: nn.Module = nn.Identity()

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v as [N, heads, head_dim, H*W]."""
        qkv = rearrange(self.to_qkv(self.norm(x)), "n (three h d) y x -> three n h d (y x)", three=3, h=self.heads)
        return qkv[0], qkv[1], qkv[2]

    @abstractmethod
    def _attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Attention output [N, heads, head_dim, H*W] from q, k, v of the same shape."""

    def forward(self, x: Tensor) -> Tensor:
        """[N, C, H, W] -> [N, C, H, W]."""
        out = self._attend(*self._qkv(x))  # [N, heads, head_dim, H*W]
        out = rearrange(out, "n h d (y x) -> n (h d) y x", y=x.shape[-2])
        return x + self.out_norm(self.to_out(out))


class LinearAttention(_PixelAttention):
    """Linear-cost attention: a [head_dim x head_dim] context per head instead of a pixel x pixel map."""

    def __init__(self, channels: int, *, heads: int = 4, head_dim: int = 32) -> None:
        super().__init__(channels, heads=heads, head_dim=head_dim)
        self.out_norm = nn.GroupNorm(1, channels)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        q = q.softmax(dim=-2) * self.head_dim**-0.5
        k = k.softmax(dim=-1)
        context = einsum("n h d p, n h e p -> n h d e", k, v)
        return einsum("n h d e, n h d p -> n h e p", context, q)


class FullAttention(_PixelAttention):
    """Softmax attention between all pixels (scaled dot product)."""

    def _attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        # contiguous [N, heads, pixels, head_dim]: with transposed views torch's CPU kernel falls back to
        # its math path, 5x slower at the cpu-lidc ST-Net's bottleneck (benchmarks/test_throughput.py)
        q, k, v = (rearrange(a, "n h d p -> n h p d").contiguous() for a in (q, k, v))
        return rearrange(F.scaled_dot_product_attention(q, k, v), "n h p d -> n h d p")
