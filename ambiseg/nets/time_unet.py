"""Time-conditioned U-Net: the ST-Net of ATFM's SFM and the denoiser of diffusion baselines.

Levels of `blocks` ResNet blocks (weight-standardised conv, GroupNorm, SiLU, scale/shift from
the time embedding) at widths `width * mults`, linear attention at every level, softmax
attention in the bottleneck, and a sinusoidal time embedding followed by an MLP; the layout of
the DDPM U-Net family (Ho et al., 2020) that ATFM's public ST-Net follows.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import partial
from typing import cast

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .attention import FullAttention, LinearAttention
from .blocks import Downsample, ResBlock, Upsample
from .embedding import SinusoidalEmbedding

__all__ = ["TimeUNet", "STNet"]


class _Level(nn.Module):
    """One resolution: ResNet blocks, an attention block, and a resampling layer."""

    def __init__(self, blocks: list[ResBlock], attention: nn.Module, resample: nn.Module) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attention = attention
        self.resample = resample


class TimeUNet(nn.Module):
    """U-Net `(x [N, in_channels, H, W], t [N]) -> [N, out_channels, H, W]`.

    Args:
        in_channels: input channels (e.g. image channels + state channels).
        out_channels: output channels (e.g. 1 for a velocity or a noise estimate).
        width: channels of the first level; level i has `width * mults[i]`.
        mults: width multipliers, one per level; H and W must be divisible by
            `2 ** (len(mults) - 1)` (the last level does not downsample).
        blocks: ResNet blocks per level (each stores a skip for the decoder).
        groups: GroupNorm groups of every ResNet block; must divide `width * m` for every
            multiplier (1 is LayerNorm-like normalisation over all channels, as in ATFM's public ST-Net).
        stem_kernel: kernel size of the input convolution (odd; padding `stem_kernel // 2` keeps
            H and W). 7 is ambiseg's default; ATFM's public ST-Net uses 1.
        attention: linear attention at every level (off: no attention at the levels).
        full_attention_mid: softmax attention in the bottleneck (off: linear attention there,
            or none when `attention` is off too).
        cond_dim: size of an optional extra conditioning vector per sample, embedded by a linear
            layer and added to the time embedding (e.g. a latent z). `None`: no such input.
        heads, head_dim: attention heads and channels per head.
        time_scale: t in [0, 1] is multiplied by this before the sinusoidal embedding.

    The output convolution starts at zero, so an untrained net predicts 0 (an untrained flow is
    the identity map, an untrained denoiser predicts zero noise).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        width: int = 32,
        mults: Sequence[int] = (1, 2, 4),
        blocks: int = 2,
        groups: int = 8,
        attention: bool = True,
        full_attention_mid: bool = True,
        cond_dim: int | None = None,
        heads: int = 4,
        head_dim: int = 32,
        time_scale: float = 1000.0,
        stem_kernel: int = 7,
    ) -> None:
        super().__init__()
        mults = tuple(int(m) for m in mults)
        _check(in_channels, out_channels, width, mults, blocks, groups, cond_dim, heads, head_dim, stem_kernel)
        stem_kernel = int(stem_kernel)
        self.in_channels, self.out_channels, self.cond_dim = in_channels, out_channels, cond_dim
        self.factor = 2 ** (len(mults) - 1)
        widths = [width * m for m in mults]
        ins = [width, *widths[:-1]]  # channels of level i's blocks (the skips it stores)
        emb_dim = 4 * width
        sin_dim = max(4, width - width % 2)
        self.time_embed = nn.Sequential(
            SinusoidalEmbedding(sin_dim, scale=time_scale),
            nn.Linear(sin_dim, emb_dim),
            nn.GELU(),
            nn.Linear(emb_dim, emb_dim),
        )
        self.cond_embed = nn.Linear(cond_dim, emb_dim) if cond_dim else None
        res = partial(ResBlock, emb_dim=emb_dim, groups=groups)

        def attn(channels: int) -> nn.Module:
            return LinearAttention(channels, heads=heads, head_dim=head_dim) if attention else nn.Identity()

        last = len(widths) - 1
        self.stem = nn.Conv2d(in_channels, width, stem_kernel, padding=stem_kernel // 2)
        self.down = nn.ModuleList(
            _Level(
                [res(c, c) for _ in range(blocks)],
                attn(c),
                nn.Conv2d(c, nxt, 3, padding=1) if i == last else Downsample(c, nxt),
            )
            for i, (c, nxt) in enumerate(zip(ins, widths, strict=True))
        )
        mid = widths[-1]
        self.mid_block1 = res(mid, mid)
        self.mid_attention = FullAttention(mid, heads=heads, head_dim=head_dim) if full_attention_mid else attn(mid)
        self.mid_block2 = res(mid, mid)
        self.up = nn.ModuleList(
            _Level(
                [res(nxt + c, nxt) for _ in range(blocks)],
                attn(nxt),
                nn.Conv2d(nxt, c, 3, padding=1) if i == 0 else Upsample(nxt, c),
            )
            for i, (c, nxt) in reversed(list(enumerate(zip(ins, widths, strict=True))))
        )
        self.final_block = res(2 * width, width)
        self.head = nn.Conv2d(width, out_channels, 1)
        nn.init.zeros_(self.head.weight)  # the untrained net outputs 0 (ADM's zero-initialised output layer)
        if self.head.bias is not None:  # always true (Conv2d's default bias=True); the attribute is typed Optional
            nn.init.zeros_(self.head.bias)

    def embed(self, t: Tensor | float, n: int, cond_vec: Tensor | None, like: Tensor) -> Tensor:
        """Time (+ conditioning) embedding [n, 4 * width] for t of shape [], [1] or [n]."""
        t = torch.as_tensor(t, device=like.device, dtype=like.dtype).reshape(-1)
        if t.numel() == 1:
            t = t.expand(n)
        if t.shape[0] != n:
            raise ConfigError(f"TimeUNet: t has {t.shape[0]} entries for a batch of {n}; pass one time per sample")
        emb = self.time_embed(t)
        if self.cond_embed is None:
            if cond_vec is not None:
                raise ConfigError("TimeUNet got cond_vec but was built without cond_dim; set cond_dim")
            return emb
        if cond_vec is None or tuple(cond_vec.shape) != (n, self.cond_dim):
            got = None if cond_vec is None else tuple(cond_vec.shape)
            raise ConfigError(
                f"TimeUNet built with cond_dim={self.cond_dim} needs cond_vec of shape "
                f"({n}, {self.cond_dim}), got {got}"
            )
        return emb + self.cond_embed(cond_vec.to(emb.dtype))

    def forward(self, x: Tensor, t: Tensor | float, cond_vec: Tensor | None = None) -> Tensor:
        """`x` [N, in_channels, H, W], `t` [N] (or a scalar) in [0, 1], `cond_vec` [N, cond_dim] -> [N, out, H, W]."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ConfigError(f"TimeUNet expects x of shape [N, {self.in_channels}, H, W], got {tuple(x.shape)}")
        if x.shape[-2] % self.factor or x.shape[-1] % self.factor:
            raise ConfigError(
                f"TimeUNet with {len(self.down)} levels needs H and W divisible by {self.factor}, "
                f"got {tuple(x.shape[-2:])}; resize the images or use fewer mults"
            )
        emb = self.embed(t, x.shape[0], cond_vec, x)
        x = self.stem(x)
        stem, skips = x, []
        # cast: `down` and `up` hold only _Level (built in __init__), but a ModuleList iterates as plain Modules
        for level in cast(Iterable[_Level], self.down):
            for j, block in enumerate(level.blocks):
                x = block(x, emb)
                if j == len(level.blocks) - 1:
                    x = level.attention(x)
                skips.append(x)
            x = level.resample(x)
        x = self.mid_block2(self.mid_attention(self.mid_block1(x, emb)), emb)
        for level in cast(Iterable[_Level], self.up):
            for block in level.blocks:
                x = block(torch.cat([x, skips.pop()], dim=1), emb)
            x = level.resample(level.attention(x))
        return self.head(self.final_block(torch.cat([x, stem], dim=1), emb))


def _check(
    in_channels: int,
    out_channels: int,
    width: int,
    mults: tuple[int, ...],
    blocks: int,
    groups: int,
    cond_dim: int | None,
    heads: int,
    head_dim: int,
    stem_kernel: int,
) -> None:
    """Raise ConfigError naming the bad TimeUNet option and how to fix it."""
    positive = {
        "in_channels": in_channels,
        "out_channels": out_channels,
        "width": width,
        "blocks": blocks,
        "groups": groups,
        "heads": heads,
        "head_dim": head_dim,
    }
    for key, value in positive.items():
        if int(value) < 1:
            raise ConfigError(f"TimeUNet option '{key}' must be a positive integer, got {value}")
    try:
        kernel = int(stem_kernel)
    except (TypeError, ValueError):
        kernel = 0
    if isinstance(stem_kernel, bool) or kernel != stem_kernel or kernel < 1 or kernel % 2 == 0:
        raise ConfigError(
            f"TimeUNet option 'stem_kernel' must be an odd positive integer (the stem conv is padded "
            f"by stem_kernel // 2 to keep H and W), got {stem_kernel!r}; use e.g. 1, 3 or 7"
        )
    if not mults or min(mults) < 1:
        raise ConfigError(f"TimeUNet option 'mults' must be non-empty positive integers, got {mults}")
    bad = [width * m for m in (1, *mults) if (width * m) % groups]
    if bad:
        raise ConfigError(
            f"TimeUNet: GroupNorm groups={groups} must divide every level width "
            f"(width * mults = {[width * m for m in mults]}); pick a width that is a multiple of {groups}"
        )
    if cond_dim is not None and int(cond_dim) < 1:
        raise ConfigError(f"TimeUNet option 'cond_dim' must be a positive integer or None, got {cond_dim}")


STNet = TimeUNet
"""ATFM's name for this network (its "ST-Net", the SFM transport's velocity field); CIMD's and
tdpm's denoisers are the same class."""
