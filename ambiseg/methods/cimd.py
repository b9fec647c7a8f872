"""CIMD-style conditional diffusion (Rahman et al., "Ambiguous Medical Image Segmentation using
Diffusion Models", CVPR 2023) as the diffusion transport `cimd`.

A DDPM over the mask in [-1, 1]: the denoiser (ambiseg's `TimeUNet`) sees the image
concatenated with x_k and predicts eps; linear beta schedule, T = 1000. Ambiguity modelling:
a posterior net q(z | image, mask) and a prior net p(z | image, x_k) over a global latent
(diagonal Gaussians, latent 6, the Prob. U-Net encoders of `latent.py`) give z to the
denoiser (added to its time embedding); KL(q || p) / 1000 is added to the loss and, unlike in
the public code, trained. "Prediction" (the prior net's second input) is the current state
x_k that the denoiser is asked about: at sampling z is re-evaluated at every step from the
prior net on (image, x_k) with a standard normal eps_z drawn once per sample in `expand`.
The plain conditional DDPM underneath, without the latent, is the transport `cond-ddpm`
(`ConditionalDDPM`, used by the `tdpm` composition); `cimd` with `latent_dim=0` builds the same
network and is kept so that older runs load.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..diffusion import DiffusionTransport
from ..errors import ConfigError
from ..interfaces import Prior, repeat_cond
from ..losses import pick_annotator, unpack_batch
from ..nets import TimeUNet
from ..recipes import Recipe, register_recipe
from ..registry import transports
from .budget import with_lidc_v2
from .latent import GaussianEncoder

__all__ = ["CIMDTransport", "ConditionalDDPM", "RECIPE"]


@transports.register("cond-ddpm")
class ConditionalDDPM(DiffusionTransport):
    """A conditional DDPM denoiser: the `TimeUNet` sees the image concatenated with x_k.

    Args:
        in_channels: image channels (concatenated with the 1-channel state).
        steps, schedule, beta_start, beta_end, truncation: the diffusion chain and its noise schedule
            (see `DiffusionTransport`).
        prediction: the network's output, "eps" (CIMD) or "v" (see `DiffusionTransport`).
        width, mults, blocks, attention, groups: the `TimeUNet` denoiser (groups: GroupNorm groups).
    """

    default_training = {"optimizer": "adamw", "lr": 1e-4, "weight_decay": 0.0}
    latent_dim = 0
    _name = "cond-ddpm"  # in error messages

    def __init__(
        self,
        *,
        in_channels: int = 1,
        steps: int = 1000,
        schedule: str | dict[str, Any] = "linear",
        beta_start: float | None = None,
        beta_end: float | None = None,
        truncation: int | None = None,
        width: int = 128,
        mults: tuple[int, ...] = (1, 2, 4),
        blocks: int = 2,
        attention: bool = True,
        groups: int = 8,
        prediction: str = "eps",
        _cond_dim: int = 0,
    ) -> None:
        super().__init__(
            steps=steps,
            schedule=schedule,
            beta_start=beta_start,
            beta_end=beta_end,
            truncation=truncation,
            prediction=prediction,
        )
        self.denoiser = TimeUNet(
            in_channels + 1,
            1,
            width=width,
            mults=tuple(mults),
            blocks=blocks,
            attention=attention,
            groups=groups,
            cond_dim=_cond_dim or None,
        )

    def denoise(self, x: Tensor, k: Tensor, image: Tensor, z: Tensor | None) -> Tensor:
        """The network's output [N, 1, H, W] (eps or v, see `prediction`) at states `x` [N, 1, H, W],
        steps `k` [N], latent `z` [N, latent_dim] (None without a latent)."""
        return self.denoiser(torch.cat([image, x], dim=1), k.to(x.dtype) / self.schedule.steps, z)

    def expand(self, cond: Tensor, repeats: int, *, generator: torch.Generator | None = None) -> dict[str, Any]:
        """Per-sample images."""
        return {"image": repeat_cond(cond, repeats)}

    def _check_step(self, t: Tensor | None) -> Tensor:
        if t is None:
            raise ConfigError(
                f"transport '{self._name}' is a diffusion denoiser and needs a step; "
                "integrate it with a diffusion sampler"
            )
        return t

    def forward(self, x: Tensor, t: Tensor | None, cond: dict[str, Any]) -> Tensor:
        """eps at x_k."""
        t = self._check_step(t)
        return self.to_eps(x, t, self.denoise(x, t, cond["image"], None))

    def loss(self, batch: dict[str, Tensor], prior: Prior) -> dict[str, Tensor]:
        """MSE(output, target) at a uniform step of the (truncated) chain, one annotator per image,
        plus the latent's penalty and terms (`latent_terms`; none without a latent)."""
        image, masks = unpack_batch(batch)
        x0 = 2.0 * pick_annotator(masks) - 1.0
        k = self.train_steps(x0.shape[0], x0.device)
        eps = torch.randn_like(x0)
        xk = self.schedule.q_sample(x0, k, eps)
        z, penalty, terms = self.latent_terms(image, x0, xk)
        mse = F.mse_loss(self.denoise(xk, k, image, z), self.target(x0, eps, k))
        return {"loss": mse if penalty is None else mse + penalty, "mse": mse, **terms}

    def latent_terms(
        self, image: Tensor, x0: Tensor, xk: Tensor
    ) -> tuple[Tensor | None, Tensor | None, dict[str, Tensor]]:
        """The training latent z for the denoiser, the loss penalty it adds and its logged terms."""
        return None, None, {}


@transports.register("cimd")
class CIMDTransport(ConditionalDDPM):
    """The conditional denoiser of `ConditionalDDPM` plus CIMD's trained ambiguity latent.

    Args:
        latent_dim: size of the ambiguity latent z (6); 0 disables the prior/posterior nets
            (the same network as `cond-ddpm`, accepted so older runs load).
        kl_weight: weight of KL(posterior || prior) (1/1000 as in CIMD).
        encoder_widths, encoder_convs: U-Net encoder of the prior and posterior nets.
        **options: the denoiser and chain (see `ConditionalDDPM`).
    """

    _name = "cimd"

    def __init__(
        self,
        *,
        latent_dim: int = 6,
        kl_weight: float = 1e-3,
        encoder_widths: tuple[int, ...] = (32, 64, 128, 192),
        encoder_convs: int = 3,
        **options: Any,
    ) -> None:
        if int(latent_dim) < 0:
            raise ConfigError(f"cimd: latent_dim must be >= 0 (0 disables the ambiguity latent), got {latent_dim}")
        in_channels = int(options.get("in_channels", 1))
        super().__init__(**options, _cond_dim=int(latent_dim))
        self.latent_dim, self.kl_weight = int(latent_dim), float(kl_weight)
        if self.latent_dim:
            enc = partial(GaussianEncoder, widths=tuple(encoder_widths), convs=encoder_convs)
            self.prior_net = enc(in_channels + 1, self.latent_dim)
            self.posterior_net = enc(in_channels + 1, self.latent_dim)

    def expand(self, cond: Tensor, repeats: int, *, generator: torch.Generator | None = None) -> dict[str, Any]:
        """Per-sample images and, with a latent, the standard normal eps_z [N, latent_dim] of each sample."""
        out = super().expand(cond, repeats, generator=generator)
        out["eps_z"] = None
        if self.latent_dim:
            image = out["image"]
            out["eps_z"] = torch.randn(
                image.shape[0], self.latent_dim, generator=generator, device=image.device, dtype=image.dtype
            )
        return out

    def forward(self, x: Tensor, t: Tensor | None, cond: dict[str, Any]) -> Tensor:
        """eps at x_k; z = mu + sigma * eps_z from the prior net on (image, x_k)."""
        t = self._check_step(t)
        image, z = cond["image"], None
        if self.latent_dim:
            prior = self.prior_net(torch.cat([image, x], dim=1))
            z = prior.mu + prior.sigma * cond["eps_z"]
        return self.to_eps(x, t, self.denoise(x, t, image, z))

    def latent_terms(
        self, image: Tensor, x0: Tensor, xk: Tensor
    ) -> tuple[Tensor | None, Tensor | None, dict[str, Tensor]]:
        """z from the posterior on (image, x0); kl_weight KL(posterior || prior on (image, x_k))."""
        if not self.latent_dim:
            return super().latent_terms(image, x0, xk)
        posterior = self.posterior_net(torch.cat([image, x0], dim=1))
        z = posterior.rsample()
        kl = posterior.kl(self.prior_net(torch.cat([image, xk], dim=1))).mean()
        return z, self.kl_weight * kl, {"kl": kl}


_TRAIN = {"optimizer": "adamw", "lr": 1e-4, "weight_decay": 0.0, "batch_size": 8, "epochs": 200}
_PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {
        "transport": {
            "steps": 25,
            "width": 8,
            "mults": (1, 2),
            "blocks": 1,
            "attention": False,
            "encoder_widths": (4, 8),
            "encoder_convs": 1,
        },
        "sampler": {"name": "ddim", "steps": 5},
        "train": {"transport": {"steps": 2, "batch_size": 4, "val_images": 2, "val_samples": 2}},
    },
    "cpu": {
        "transport": {
            "steps": 100,
            "width": 16,
            "mults": (1, 2, 4),
            "blocks": 1,
            "attention": False,
            "encoder_widths": (16, 32, 64),
            "encoder_convs": 2,
        },
        "sampler": {"name": "ddim", "steps": 10},
        "train": {"transport": {"lr": 1e-3, "steps": 1500, "batch_size": 8, "val_images": 4, "val_samples": 4}},
    },
    # LIDC on 2 CPU cores (64 px crops): the denoiser at ATFM's cpu-lidc ST-Net width, so a
    # sampling step costs what ATFM's does; DDIM 10 steps; v-prediction, a departure from
    # CIMD's eps: under eps the x0 estimate from noise never formed (docs/training.md)
    "cpu-lidc": {
        "transport": {
            "prediction": "v",
            "steps": 100,
            "width": 8,
            "mults": (1, 2, 4),
            "blocks": 1,
            "groups": 4,
            "attention": False,
            "encoder_widths": (16, 32, 64),
            "encoder_convs": 2,
        },
        "sampler": {"name": "ddim", "steps": 10},
        "train": {
            "transport": {
                "lr": 1e-3,
                "steps": 2000,
                "batch_size": 8,
                "val_every": 250,
                "val_images": 48,
                "val_samples": 16,
            }
        },
    },
    "paper-lidc": {"in_channels": 1, "image_size": 128, "train": {"transport": {"epochs": 200}}},
    "paper-isic3": {"in_channels": 3, "image_size": 256, "train": {"transport": {"epochs": 120}}},
}

RECIPE = register_recipe(
    Recipe(
        name="cimd",
        prior={"name": "noise"},
        transport={"name": "cimd"},
        sampler={"name": "ddpm"},
        stages=("transport",),
        train={"transport": dict(_TRAIN)},
        presets=with_lidc_v2(_PRESETS, {"transport": 4.0}, stage_options={"transport": {"val_samples": 4}}),
        description="CIMD-style conditional DDPM with a trained ambiguity latent (Rahman et al., CVPR 2023)",
    )
)
