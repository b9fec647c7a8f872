"""Probabilistic U-Net (Kohl et al., "A Probabilistic U-Net for Segmentation of Ambiguous
Images", NeurIPS 2018) as a prior (`probunet-latent`) and a map transport (`fcomb`).

The prior is a diagonal Gaussian over a global latent z given the image (prior net); its
posterior net sees the image and a mask and exists for training. The transport computes U-Net
features once per image and decodes each z with fcomb (z tiled over H x W, concatenated with
the features, 1x1 convs), so extra samples cost only fcomb. Trained jointly on
CE (summed over pixels) + beta KL(posterior || prior).

fcomb reads its prior through the `LatentPrior` interface only: any prior of one flat latent
feeds it, and its `latent_dim` follows the prior's unless given.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from einops import repeat
from torch import Tensor, nn

from .. import backbones
from ..errors import CompatibilityError, ConfigError
from ..interfaces import LatentDraw, LatentPrior, Prior, Transport
from ..losses import pick_annotator, unpack_batch
from ..recipes import Recipe, register_recipe
from ..registry import priors, transports
from .budget import with_lidc_v2
from .latent import DiagonalGaussian, GaussianEncoder

__all__ = ["ProbUNetLatent", "FComb", "RECIPE"]

# Image size at which fcomb reads its prior's `latent_shapes` (a global latent has one at every size).
REFERENCE_SIZE = (128, 128)


@priors.register("probunet-latent")
class ProbUNetLatent(LatentPrior):
    """Prior net p(z | image) and posterior net q(z | image, mask), diagonal Gaussians over [latent_dim].

    Args:
        in_channels: image channels (the posterior net gets one more: the mask shifted by -0.5,
            as in the official code).
        latent_dim: size of z (6 in the paper's LIDC setting).
        widths: encoder widths of both nets (the U-Net encoder's, 32/64/128/192 by default).
        convs: 3x3 conv + ReLU layers per encoder level.
        norm: normalisation after every conv (None as the paper; "batch", "group", "instance").
    """

    draws = "latent"

    def __init__(
        self,
        *,
        in_channels: int = 1,
        latent_dim: int = 6,
        widths: tuple[int, ...] = (32, 64, 128, 192),
        convs: int = 3,
        norm: str | None = None,
    ) -> None:
        super().__init__()
        if int(latent_dim) < 1:
            raise ConfigError(f"probunet-latent: latent_dim must be >= 1, got {latent_dim}")
        self.latent_dim = int(latent_dim)
        nets = partial(GaussianEncoder, widths=tuple(widths), convs=convs, norm=norm)
        self.prior_net = nets(in_channels, self.latent_dim)
        self.posterior_net = nets(in_channels + 1, self.latent_dim)

    def prior(self, images: Tensor) -> DiagonalGaussian:
        """p(z | image) with mu, log sigma [B, latent_dim]."""
        return self.prior_net(images)

    def posterior(self, images: Tensor, mask: Tensor) -> DiagonalGaussian:
        """q(z | image, mask) for `mask` [B, 1, H, W] in {0, 1}."""
        return self.posterior_net(torch.cat([images, mask - 0.5], dim=1))

    def condition(self, images: Tensor) -> DiagonalGaussian:
        return self.prior(images)

    def sample(self, state: DiagonalGaussian, num_samples: int, *, generator: torch.Generator | None = None) -> Tensor:
        """z ~ p(z | image): [B, num_samples, latent_dim]."""
        mu = repeat(state.mu, "b d -> b n d", n=num_samples)
        log_sigma = repeat(state.log_sigma, "b d -> b n d", n=num_samples)
        return DiagonalGaussian(mu, log_sigma).rsample(generator=generator)

    def posterior_draw(self, images: Tensor, mask: Tensor) -> LatentDraw:
        """z ~ q(z | image, mask) [B, latent_dim] and KL(q || p) [B, 1]."""
        posterior = self.posterior(images, mask)
        z = posterior.rsample()
        return LatentDraw(z, posterior.kl(self.prior(images)).unsqueeze(1))

    def latent_shapes(self, size: tuple[int, int]) -> tuple[tuple[int, ...], ...]:
        """One global latent whatever the image size: ((latent_dim,),)."""
        return ((self.latent_dim,),)


@transports.register("fcomb")
class FComb(Transport):
    """U-Net features (once per image) + fcomb decoder of a global latent z -> logits [N, 1, H, W].

    Its prior is any `LatentPrior` of one flat latent [latent_dim]; it trains on the prior's
    `posterior_draw`.

    Args:
        in_channels: image channels.
        latent_dim: size of z; None (default) takes the prior's when composed and builds fcomb
            then; a number builds it now and must match the prior's.
        backbone: feature network spec for `ambiseg.backbones.create` ("unet", "smp:Unet:resnet18", ...).
        backbone_options: extra keyword options of the backbone (e.g. {"widths": [16, 32, 64]}).
        features: feature channels the backbone returns (32 in the paper).
        layers: 1x1 conv + ReLU layers of fcomb before the final 1x1 conv to logits (3).
        beta: weight of KL(posterior || prior) in the loss (1, the official code's value).
    """

    accepts = frozenset({"latent"})

    kind = "map"
    joint = True
    default_training = {"optimizer": "adam", "lr": 1e-4, "weight_decay": 1e-5}

    def __init__(
        self,
        *,
        in_channels: int = 1,
        latent_dim: int | None = None,
        backbone: str = "unet",
        backbone_options: dict[str, Any] | None = None,
        features: int = 32,
        layers: int = 3,
        beta: float = 1.0,
    ) -> None:
        super().__init__()
        if backbone_options is not None and not isinstance(backbone_options, dict):
            raise ConfigError(f"fcomb: backbone_options must be a dict of backbone options, got {backbone_options!r}")
        if int(layers) < 1 or int(features) < 1:
            raise ConfigError(f"fcomb: layers and features must be >= 1, got layers={layers}, features={features}")
        if latent_dim is not None and int(latent_dim) < 1:
            raise ConfigError(f"fcomb: latent_dim must be >= 1 (or None: the prior's), got {latent_dim}")
        self.beta, self.features, self.layers = float(beta), int(features), int(layers)
        self.unet = backbones.create(backbone, in_channels, features, **(backbone_options or {}))
        self.latent_dim: int | None = None
        self.fcomb: nn.Sequential | None = None
        if latent_dim is not None:
            self._build(int(latent_dim))

    def _build(self, latent_dim: int) -> None:
        """The fcomb decoder for latents [latent_dim] (1x1 convs), on the device of the U-Net."""
        chans = [self.features + latent_dim] + [self.features] * self.layers
        body: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:], strict=True):
            body += [nn.Conv2d(cin, cout, 1), nn.ReLU(inplace=True)]
        fcomb = nn.Sequential(*body, nn.Conv2d(self.features, 1, 1))
        ref = next(self.unet.parameters(), None)
        self.latent_dim, self.fcomb = latent_dim, fcomb if ref is None else fcomb.to(ref.device, ref.dtype)

    @staticmethod
    def _latent(prior: Prior) -> LatentPrior:
        """`prior` as a latent prior with a posterior this transport trains on, or a `CompatibilityError`."""
        if not isinstance(prior, LatentPrior):
            raise CompatibilityError(
                f"transport fcomb decodes a global latent and trains with its posterior; it needs a "
                f"LatentPrior such as 'probunet-latent', got {type(prior).__name__}"
            )
        return prior

    def check_prior(self, prior: Prior) -> None:
        """Refuse a prior that is not a `LatentPrior` of one flat latent [latent_dim]; build fcomb
        for the prior's latent_dim when it was not given."""
        shapes = self._latent(prior).latent_shapes(REFERENCE_SIZE)
        if len(shapes) != 1 or len(shapes[0]) != 1:
            raise CompatibilityError(
                f"transport fcomb decodes one flat latent [latent_dim], but prior {type(prior).__name__} draws "
                f"latents shaped {list(shapes)}; pair it with a prior of one flat latent such as 'probunet-latent'"
            )
        dim = int(shapes[0][0])
        if self.latent_dim is None:
            self._build(dim)
        elif dim != self.latent_dim:
            raise CompatibilityError(
                f"fcomb latent_dim={self.latent_dim} but its prior has latent_dim={dim}; leave "
                "transport.latent_dim unset (it follows the prior) or set the same transport.latent_dim and "
                "prior.latent_dim"
            )

    def _decoder(self) -> nn.Sequential:
        if self.fcomb is None:
            raise CompatibilityError(
                "fcomb takes latent_dim from its prior: compose it with one (ambiseg.compose) or give latent_dim"
            )
        return self.fcomb

    def condition(self, images: Tensor) -> Tensor:
        """U-Net features [B, features, H, W], computed once per image."""
        return self.unet(images)

    def forward(self, x: Tensor, t: Tensor | None, cond: Tensor) -> Tensor:
        """Logits [N, 1, H, W] of latents `x` [N, latent_dim] on features `cond` [N, features, H, W]."""
        tiled = repeat(x, "n d -> n d h w", h=cond.shape[-2], w=cond.shape[-1])
        return self._decoder()(torch.cat([cond, tiled], dim=1))

    def to_probs(self, x: Tensor) -> Tensor:
        return torch.sigmoid(x.squeeze(1))

    def loss(self, batch: dict[str, Tensor], prior: Prior) -> dict[str, Tensor]:
        """Negative ELBO with one annotation drawn per image: CE summed over pixels + beta KL, batch mean."""
        image, masks = unpack_batch(batch)
        target = pick_annotator(masks)
        draw = self._latent(prior).posterior_draw(image, target)
        logits = self(draw.z, None, self.condition(image))
        ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).sum(1).mean()
        kl = draw.kl.sum(1).mean()
        return {"loss": ce + self.beta * kl, "ce": ce, "kl": kl}


_SMOKE_NET = {"widths": (4, 8), "convs": 1}
_PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {
        "prior": _SMOKE_NET,
        "transport": {"backbone_options": _SMOKE_NET, "features": 4},
        "train": {"joint": {"steps": 2, "batch_size": 4, "val_images": 2, "val_samples": 2}},
    },
    "cpu": {
        "prior": {"widths": (16, 32, 64, 96), "convs": 2},
        "transport": {"backbone_options": {"widths": (16, 32, 64, 96), "convs": 2}, "features": 16},
        "train": {"joint": {"lr": 1e-3, "steps": 1200, "batch_size": 12, "val_images": 8, "val_samples": 8}},
    },
    # LIDC on 2 CPU cores: GroupNorm in every net (without it the model predicts empty masks
    # for hundreds of steps; docs/training.md)
    "cpu-lidc": {
        "prior": {"widths": (16, 32, 64, 96), "convs": 2, "norm": "group"},
        "transport": {
            "backbone_options": {"widths": (16, 32, 64, 96), "convs": 2, "norm": "group"},
            "features": 16,
        },
        "train": {
            "joint": {
                "lr": 1e-3,
                "steps": 2000,
                "batch_size": 12,
                "val_every": 250,
                "val_images": 48,
                "val_samples": 16,
            }
        },
    },
    "paper-lidc": {
        "in_channels": 1,
        "image_size": 128,
        "train": {"joint": {"batch_size": 32, "steps": 240_000}},
    },
    "paper-isic3": {"in_channels": 3, "image_size": 256, "train": {"joint": {"batch_size": 32, "epochs": 400}}},
}

RECIPE = register_recipe(
    Recipe(
        name="probunet",
        prior={"name": "probunet-latent"},
        transport={"name": "fcomb"},
        sampler={"name": "direct"},
        stages=("joint",),
        train={"joint": {"optimizer": "adam", "lr": 1e-4, "weight_decay": 1e-5, "batch_size": 32, "epochs": 100}},
        presets=with_lidc_v2(_PRESETS, {"joint": 3.0}),
        aliases=("prob-unet",),
        description="Probabilistic U-Net (Kohl et al., NeurIPS 2018): global latent, fcomb decoder",
    )
)
