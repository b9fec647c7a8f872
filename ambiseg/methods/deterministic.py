"""A deterministic U-Net: the reference every stochastic method must beat on GED.

It is a method like the others — a `delta` prior (no randomness) and a `unet-map` transport
(a backbone on the image, sigmoid) — so the benchmark trains, samples and scores it the same
way; all its samples are the same mask, so its sample diversity is 0.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import backbones
from ..errors import ConfigError, closest
from ..interfaces import Prior, Transport
from ..losses import pick_annotator, unpack_batch
from ..recipes import Recipe, register_recipe
from ..registry import priors, transports
from .budget import with_lidc_v2

__all__ = ["DeltaPrior", "UNetMap"]


@priors.register("delta")
class DeltaPrior(Prior):
    """No randomness: every sample starts from the same (empty) state."""

    draws = "none"

    def condition(self, images: Tensor) -> Any:
        return images.shape[0], images.device

    def sample(self, state: Any, num_samples: int, *, generator: torch.Generator | None = None) -> Tensor:
        b, device = state
        return torch.zeros(b, num_samples, 1, device=device)


@transports.register("unet-map")
class UNetMap(Transport):
    """Backbone logits of the image (computed once per image), sigmoid; BCE to the annotations.

    Args:
        target: "mean" fits the annotators' pixel-wise mean; "random" one annotator drawn per
            image and step. Both have the same expected loss (BCE is linear in its target) and
            optimum, the raters' frequency, whose 0.5-threshold is the majority vote; "mean"
            has no sampling noise in its gradient.
    """

    kind = "map"
    accepts = frozenset({"none"})  # the map ignores the prior's state: a random one would be discarded
    default_training = {"optimizer": "adam", "lr": 1e-4, "weight_decay": 1e-5}
    TARGETS = ("mean", "random")

    def __init__(
        self,
        backbone: str = "unet",
        widths: tuple[int, ...] = (32, 64, 128, 192),
        norm: str | None = None,
        in_channels: int = 1,
        target: str = "mean",
    ) -> None:
        super().__init__()
        if target not in self.TARGETS:
            raise ConfigError(
                f"unet-map target must be one of {', '.join(self.TARGETS)}, got '{target}'"
                f"{closest(target, self.TARGETS)}"
            )
        self.target = target
        options = {"widths": tuple(widths), "norm": norm} if backbone == "unet" else {}
        self.net = backbones.create(backbone, in_channels, 1, **options)

    def condition(self, images: Tensor) -> Tensor:
        return self.net(images)

    def forward(self, x: Tensor, t: Tensor | None, cond: Tensor) -> Tensor:
        return cond

    def to_probs(self, x: Tensor) -> Tensor:
        return torch.sigmoid(x.squeeze(1))

    def loss(self, batch: dict[str, Tensor], prior: Prior) -> dict[str, Tensor]:
        image, masks = unpack_batch(batch)
        logits = self.net(image)
        target = masks.mean(1, keepdim=True) if self.target == "mean" else pick_annotator(masks)
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum((1, 2, 3)).mean()
        return {"loss": bce, "bce": bce}


_PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {"transport": {"widths": [8, 16]}, "train": {"transport": {"steps": 2, "batch_size": 4}}},
    "cpu": {
        "transport": {"widths": [16, 32, 64]},
        "train": {"transport": {"steps": 600, "batch_size": 16, "lr": 1e-3}},
    },
    # LIDC on 2 CPU cores: the plain U-Net without normalisation barely finds nodules in
    # minutes; GroupNorm does; a cosine schedule steadies the end (docs/training.md)
    "cpu-lidc": {
        "transport": {"widths": [16, 32, 64], "norm": "group"},
        "train": {
            "transport": {
                "steps": 1500,
                "batch_size": 16,
                "lr": 1e-3,
                "schedule": "cosine",
                "warmup": 100,
                "val_every": 250,
                "val_images": 48,
                "val_samples": 1,
            }
        },
    },
    "paper-lidc": {"train": {"transport": {"epochs": 100, "batch_size": 32}}},
    "paper-isic3": {"train": {"transport": {"epochs": 100, "batch_size": 16}}},
}

register_recipe(
    Recipe(
        name="det-unet",
        prior={"name": "delta"},
        transport={"name": "unet-map"},
        sampler={"name": "direct"},
        description="deterministic U-Net (reference row: no diversity)",
        presets=with_lidc_v2(_PRESETS, {"transport": 4.0}),
    )
)
