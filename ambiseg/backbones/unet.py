"""The plain U-Net of the Prob. U-Net / PHiSeg / ATFM papers.

Blocks of three 3x3 conv + ReLU, average-pool down, bilinear up with skip concatenation, no
normalisation; widths 32/64/128/192 by default. `norm` adds a normalisation after every conv
(an ambiseg option, off by default as in the papers; it speeds up short CPU trainings).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, closest
from ..registry import backbones

__all__ = ["conv_block", "encode_levels", "UNetEncoder", "UNet"]


NORMS: dict[str, Callable[[int], nn.Module]] = {
    "batch": nn.BatchNorm2d,
    "group": lambda channels: nn.GroupNorm(math.gcd(8, channels), channels),
    "instance": lambda channels: nn.InstanceNorm2d(channels, affine=True),
}


def conv_block(in_channels: int, out_channels: int, convs: int = 3, norm: str | None = None) -> nn.Sequential:
    """`convs` x (3x3 conv [+ norm] + ReLU); `norm` is None or one of `NORMS`."""
    if norm is not None and norm not in NORMS:
        raise ConfigError(
            f"unet norm must be one of {', '.join(NORMS)} or none, got {norm!r}{closest(str(norm), NORMS)}"
        )
    layers: list[nn.Module] = []
    for i in range(convs):
        layers.append(nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, padding=1))
        if norm is not None:
            layers.append(NORMS[norm](out_channels))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _check_widths(widths: tuple[int, ...]) -> tuple[int, ...]:
    widths = tuple(int(w) for w in widths)
    if not widths or min(widths) < 1:
        raise ConfigError(f"unet widths must be positive integers, got {widths}")
    return widths


def encode_levels(blocks: nn.ModuleList, x: Tensor, *, owner: str, hint: str) -> list[Tensor]:
    """Each block on the 2 x 2 average-pooled output of the one before (the first on `x` [B, C, H, W]):
    the feature map of every level, finest first.

    Raises:
        ConfigError: H or W is not divisible by 2^(levels - 1); the message names `owner` and ends with `hint`.
    """
    factor = 2 ** (len(blocks) - 1)
    if x.shape[-1] % factor or x.shape[-2] % factor:
        raise ConfigError(
            f"{owner} with {len(blocks)} levels needs H and W divisible by {factor}, got {tuple(x.shape[-2:])}; {hint}"
        )
    feats = []
    for i, block in enumerate(blocks):
        x = block(x if i == 0 else F.avg_pool2d(x, 2))
        feats.append(x)
    return feats


class UNetEncoder(nn.Module):
    """Encoder half: returns the feature map of every level, finest first."""

    def __init__(
        self, in_channels: int, widths: tuple[int, ...] = (32, 64, 128, 192), convs: int = 3, norm: str | None = None
    ) -> None:
        super().__init__()
        self.widths = _check_widths(widths)
        chans = (in_channels, *self.widths)
        self.blocks = nn.ModuleList(conv_block(chans[i], chans[i + 1], convs, norm) for i in range(len(self.widths)))

    def forward(self, x: Tensor) -> list[Tensor]:
        return encode_levels(self.blocks, x, owner="unet", hint="resize the images or use fewer widths")


@backbones.register("unet")
class UNet(nn.Module):
    """U-Net `[B, in, H, W] -> [B, out, H, W]`; with `out_channels == widths[0]` it returns the
    last decoder features directly (no extra 1x1 projection), as the papers' feature nets do."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        widths: tuple[int, ...] = (32, 64, 128, 192),
        convs: int = 3,
        norm: str | None = None,
    ) -> None:
        super().__init__()
        self.encoder = UNetEncoder(in_channels, widths, convs, norm)
        w = self.encoder.widths
        self.decoder = nn.ModuleList(
            conv_block(w[i] + w[i + 1], w[i], convs, norm) for i in reversed(range(len(w) - 1))
        )
        self.head = nn.Identity() if out_channels == w[0] else nn.Conv2d(w[0], out_channels, 1)
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> Tensor:
        feats = self.encoder(x)
        y = feats[-1]
        for block, skip in zip(self.decoder, reversed(feats[:-1]), strict=True):
            y = F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            y = block(torch.cat([y, skip], dim=1))
        return self.head(y)
