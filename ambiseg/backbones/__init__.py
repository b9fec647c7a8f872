"""Image-feature networks, created from a spec string.

`create("unet", 1, 32)`, `create("unet", 1, 32, widths=(16, 32))`,
`create("smp:Unet:resnet18", 3, 32)`, `create("smp:FPN:tu-resnet18", 1, 16)`.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..registry import backbones
from . import smp as _smp  # noqa: F401  (registers "smp")
from .unet import UNet, UNetEncoder, conv_block

__all__ = ["create", "parse_spec", "UNet", "UNetEncoder", "conv_block"]


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """`"smp:Unet:resnet18"` -> `("smp", {"arch": "Unet", "encoder": "resnet18"})`; `"unet"` -> `("unet", {})`."""
    name, *rest = spec.split(":")
    if name == "smp" and rest:
        keys = ("arch", "encoder")
        return name, dict(zip(keys, rest[: len(keys)], strict=False))  # a spec may name fewer parts
    return name, {}


def create(spec: str, in_channels: int, out_channels: int, **options: Any) -> nn.Module:
    """Build backbone `spec` mapping `[B, in_channels, H, W]` to `[B, out_channels, H, W]`."""
    name, parsed = parse_spec(spec)
    return backbones.create(name, in_channels, out_channels, **{**parsed, **options})
