"""Networks owned by ambiseg (the time-conditioned U-Net and its blocks); image-feature
networks live in `ambiseg.backbones`."""

from __future__ import annotations

from .attention import FullAttention, LinearAttention
from .blocks import Downsample, ResBlock, Upsample, WSConv2d
from .embedding import SinusoidalEmbedding
from .time_unet import STNet, TimeUNet

__all__ = [
    "TimeUNet",
    "STNet",
    "ResBlock",
    "WSConv2d",
    "Downsample",
    "Upsample",
    "LinearAttention",
    "FullAttention",
    "SinusoidalEmbedding",
]
