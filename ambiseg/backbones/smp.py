"""segmentation-models-pytorch architectures as backbones (`smp:<Arch>:<encoder>`).

No weights are downloaded: `encoder_weights=None` unless a local choice is made; timm
encoders are reached through smp's `tu-` names (e.g. `smp:Unet:tu-resnet18`).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import ConfigError, closest
from ..registry import backbones

__all__ = ["smp_model"]


@backbones.register("smp")
def smp_model(
    in_channels: int,
    out_channels: int,
    arch: str = "Unet",
    encoder: str = "resnet18",
    encoder_weights: str | None = None,
    encoder_depth: int | None = None,
) -> nn.Module:
    """`smp.create_model(arch, encoder, ...)` with `out_channels` classes."""
    import segmentation_models_pytorch as smp

    archs = sorted(
        k
        for k in dir(smp)
        if k[:1].isupper() and isinstance(getattr(smp, k), type) and issubclass(getattr(smp, k), nn.Module)
    )
    if arch not in archs:
        raise ConfigError(f"unknown smp architecture '{arch}'{closest(arch, archs)}; known: {', '.join(archs)}")
    extra: dict[str, Any] = {}
    if encoder_depth is not None:
        extra["encoder_depth"] = encoder_depth
    if not encoder.startswith("tu-") and encoder not in smp.encoders.get_encoder_names():
        names = smp.encoders.get_encoder_names()
        raise ConfigError(
            f"unknown smp encoder '{encoder}'{closest(encoder, names)}; "
            "use an smp encoder name or a timm one prefixed with 'tu-'"
        )
    try:
        model = smp.create_model(
            arch,
            encoder_name=encoder,
            encoder_weights=encoder_weights,
            in_channels=in_channels,
            classes=out_channels,
            **extra,
        )
    except (KeyError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"smp could not build {arch} with encoder '{encoder}': {exc}") from exc
    model.out_channels = out_channels
    return model
