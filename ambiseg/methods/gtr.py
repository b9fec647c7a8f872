"""GTR: Gaussian Truncation Representation, the first stage of ATFM (Li et al., AAAI 2026).

A backbone maps the image to features; three 1x1 heads give the mean `mu`, the log-diagonal
and a rank-r factor `P` of a Gaussian over the flattened H*W logit map,
`N(mu, P P^T + diag(exp(log_d) + 1e-5))` (a Stochastic Segmentation Network, Monteiro et al.,
2020). It is trained on one randomly drawn annotator per image and step with a Monte-Carlo
estimate of the mask likelihood, then frozen; its samples (after a sigmoid) are the sources
of the SFM flow, or the predictions themselves in "Act. GTR" / SSN.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import ClassVar

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, LowRankMultivariateNormal, Normal

from .. import backbones
from ..errors import ConfigError, closest
from ..interfaces import Prior
from ..losses import pick_annotator, unpack_batch
from ..registry import priors

__all__ = ["GTRState", "GTRPrior", "LOSS_FORMS", "DIAG_EPS"]

DIAG_EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class GTRState:
    """The per-image Gaussian over logits: `mean` [B, P], `cov_diag` [B, P] and `cov_factor`
    [B, P, r] (None for a diagonal Gaussian), with P = H * W pixels of `size` (H, W)."""

    mean: Tensor
    cov_diag: Tensor
    cov_factor: Tensor | None
    size: tuple[int, int]

    @property
    def distribution(self) -> Distribution:
        """The same Gaussian as a `torch.distributions` object over [P] (batch shape [B])."""
        if self.cov_factor is None:
            return Independent(Normal(self.mean, self.cov_diag.sqrt()), 1)
        return LowRankMultivariateNormal(self.mean, self.cov_factor, self.cov_diag)

    def draw(self, num: int, *, antithetic: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """`num` reparameterised logit samples [B, num, P]: `mu + P e1 + sqrt(D) e2`, e ~ N(0, I).

        The standard normals come from `generator`, so a seeded generator gives the same samples.
        `antithetic`: draw num/2 deviations and mirror them about the mean (num must be even).
        """
        b, p = self.mean.shape
        fresh = num // 2 if antithetic else num

        def normal(*size: int) -> Tensor:
            return torch.randn(*size, generator=generator, device=self.mean.device, dtype=self.mean.dtype)

        dev = self.cov_diag.sqrt().unsqueeze(1) * normal(b, fresh, p)
        if self.cov_factor is not None:
            eps = normal(b, fresh, self.cov_factor.shape[-1])
            dev = dev + torch.einsum("bpr,bnr->bnp", self.cov_factor, eps)
        if antithetic:
            dev = torch.cat([dev, -dev], dim=1)
        return self.mean.unsqueeze(1) + dev


def _logsumexp_loss(log_lik: Tensor) -> Tensor:
    """-log of the MC-averaged likelihood per image: -(logsumexp_m log p_m - log M)."""
    return -(torch.logsumexp(log_lik, dim=1) - math.log(log_lik.shape[1]))


def _mean_nll_loss(log_lik: Tensor) -> Tensor:
    """Mean over MC samples of the per-sample negative log-likelihood (the paper's Eq. 5)."""
    return -log_lik.mean(dim=1)


LOSS_FORMS: dict[str, Callable[[Tensor], Tensor]] = {"logsumexp": _logsumexp_loss, "mean-nll": _mean_nll_loss}


@priors.register("gtr")
class GTRPrior(Prior):
    """Low-rank Gaussian over the logit map, one per image; samples are sigmoid(logits).

    Args:
        backbone: backbone spec for `ambiseg.backbones.create` ("unet", "smp:Unet:resnet18", ...).
        widths: level widths of the "unet" backbone (ignored by other backbones).
        norm: normalisation in the "unet" backbone (None as the paper, "batch", "group",
            "instance").
        centre_factor: remove each covariance column's mean over the pixels, so no direction
            of the Gaussian shifts the whole logit map (an ambiseg option: on LIDC the
            uncentred factor learns such a global offset, half of the samples then cover the
            whole image; docs/training.md).
        mean_weight: weight of an extra term fitting the mean logits to the annotators'
            pixel-wise frequency (BCE summed over pixels); 0 (the paper) leaves it out.
        temperature: scale of the deviation from the mean in drawn samples (`sample`, which
            also feeds a transport's training); 1 (the paper) draws from the fitted Gaussian,
            below 1 narrows it. The training loss always uses the fitted Gaussian. A sampling
            option: it can be changed on a trained checkpoint (`ambiseg eval --set
            prior.temperature=0.8`).
        features: feature channels the backbone outputs, read by the three 1x1 heads.
        rank: rank r of the covariance factor; 0 gives a diagonal Gaussian.
        mc_samples: Monte-Carlo samples M of the training loss.
        antithetic: draw M/2 samples and mirror them about the mean (variance reduction).
        loss_form: "logsumexp" (-log of the MC-averaged likelihood, as the public code trains)
            or "mean-nll" (the mean of per-sample NLLs, as the paper's Eq. 5 writes).
        in_channels: image channels (filled in from the data by the Method).
    """

    draws = "mask"  # sigmoid of the Gaussian logits

    trainable_alone: ClassVar[bool] = True
    default_training: ClassVar[dict] = {"optimizer": "adamw", "lr": 1e-4, "weight_decay": 1e-4}
    channels: ClassVar[int] = 1

    def __init__(
        self,
        *,
        backbone: str = "unet",
        widths: tuple[int, ...] = (32, 64, 128, 192),
        features: int = 32,
        rank: int = 10,
        mc_samples: int = 20,
        antithetic: bool = True,
        loss_form: str = "logsumexp",
        norm: str | None = None,
        centre_factor: bool = False,
        mean_weight: float = 0.0,
        temperature: float = 1.0,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        _check_options(
            features=features,
            rank=rank,
            mc_samples=mc_samples,
            antithetic=antithetic,
            loss_form=loss_form,
            in_channels=in_channels,
        )
        opts = {"widths": tuple(widths), "norm": norm} if backbones.parse_spec(backbone)[0] == "unet" else {}
        self.backbone = backbones.create(backbone, int(in_channels), int(features), **opts)
        self.mean_head = nn.Conv2d(features, 1, 1)
        self.log_diag_head = nn.Conv2d(features, 1, 1)
        self.factor_head = nn.Conv2d(features, rank, 1) if rank > 0 else None
        self.rank, self.mc_samples, self.antithetic = int(rank), int(mc_samples), bool(antithetic)
        self.loss_form, self.centre_factor = loss_form, bool(centre_factor)
        if float(mean_weight) < 0:
            raise ConfigError(f"prior 'gtr' option 'mean_weight' must be >= 0, got {mean_weight}")
        self.mean_weight = float(mean_weight)
        if not (math.isfinite(float(temperature)) and float(temperature) > 0):
            raise ConfigError(f"prior 'gtr' option 'temperature' must be a finite number > 0, got {temperature}")
        self.temperature = float(temperature)

    def condition(self, images: Tensor) -> GTRState:
        """Run the backbone once: the Gaussian of each image in `images` [B, C, H, W]."""
        feats = self.backbone(images)
        mean = rearrange(self.mean_head(feats), "b 1 h w -> b (h w)")
        cov_diag = rearrange(self.log_diag_head(feats), "b 1 h w -> b (h w)").exp() + DIAG_EPS
        factor = None
        if self.factor_head is not None:
            factor = rearrange(self.factor_head(feats), "b r h w -> b (h w) r")
            if self.centre_factor:  # no column may shift the whole logit map (see docs/training.md)
                factor = factor - factor.mean(dim=1, keepdim=True)
        return GTRState(mean, cov_diag, factor, (images.shape[-2], images.shape[-1]))

    def sample(self, state: GTRState, num_samples: int, *, generator: torch.Generator | None = None) -> Tensor:
        """`num_samples` sources per image: sigmoid(logit samples) [B, num_samples, 1, H, W] in [0, 1]."""
        logits = state.draw(num_samples, generator=generator)
        if self.temperature != 1.0:
            # CUDA autocast leaves the draw in fp32 (exp runs in fp32) while the mean head gives bf16
            logits = torch.lerp(state.mean.unsqueeze(1).to(logits.dtype), logits, self.temperature)
        h, w = state.size
        return rearrange(logits, "b n (h w) -> b n 1 h w", h=h, w=w).sigmoid()

    def guide(self, state: GTRState) -> Tensor:
        """The mean's probability map sigmoid(mu) [B, 1, H, W] (the GTR's distribution-level answer)."""
        h, w = state.size
        return rearrange(state.mean, "b (h w) -> b 1 h w", h=h, w=w).sigmoid()

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """MC likelihood loss against one random annotator per image.

        Returns "loss" (the chosen `loss_form`, summed over pixels, mean over images, plus
        `mean_weight` x "mean_fit"), "nll" (mean per-sample NLL), "nll_mc" (-log MC-averaged
        likelihood), "mean_fit" (BCE of the mean logits against the annotators' frequency, summed
        over pixels) and "bce_mean" (per-pixel BCE of the mean logits against the drawn annotator).
        """
        image, masks = unpack_batch(batch)
        target = rearrange(pick_annotator(masks), "b 1 h w -> b (h w)")
        state = self.condition(image)
        logits = state.draw(self.mc_samples, antithetic=self.antithetic)
        log_lik = -F.binary_cross_entropy_with_logits(
            logits, repeat(target, "b p -> b m p", m=self.mc_samples), reduction="none"
        ).sum(-1)  # [B, M]
        terms = {name: form(log_lik).mean() for name, form in (("nll", _mean_nll_loss), ("nll_mc", _logsumexp_loss))}
        loss = LOSS_FORMS[self.loss_form](log_lik).mean()
        # the mean against the annotators' pixel-wise frequency, summed over pixels like the NLL
        soft = rearrange(masks.float().mean(dim=1), "b h w -> b (h w)")
        mean_fit = F.binary_cross_entropy_with_logits(state.mean, soft, reduction="none").sum(-1).mean()
        if self.mean_weight:
            loss = loss + self.mean_weight * mean_fit
        return {
            "loss": loss,
            **terms,
            "mean_fit": mean_fit,
            "bce_mean": F.binary_cross_entropy_with_logits(state.mean, target),
        }

    def extra_repr(self) -> str:
        return (
            f"rank={self.rank}, mc_samples={self.mc_samples}, antithetic={self.antithetic}, "
            f"loss_form={self.loss_form!r}"
        )


def _check_options(
    *, features: int, rank: int, mc_samples: int, antithetic: bool, loss_form: str, in_channels: int
) -> None:
    """Raise ConfigError naming the bad GTR option and how to fix it."""
    for key, value, low in (
        ("features", features, 1),
        ("rank", rank, 0),
        ("mc_samples", mc_samples, 1),
        ("in_channels", in_channels, 1),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ConfigError(f"prior 'gtr' option '{key}' must be an integer >= {low}, got {value!r}")
    if antithetic and mc_samples % 2:
        raise ConfigError(
            f"prior 'gtr': antithetic sampling mirrors pairs, so mc_samples must be even "
            f"(got {mc_samples}); use an even number or antithetic=False"
        )
    if loss_form not in LOSS_FORMS:
        raise ConfigError(
            f"prior 'gtr' option 'loss_form' is {loss_form!r}{closest(str(loss_form), LOSS_FORMS)}; "
            f"choose one of: {', '.join(LOSS_FORMS)}"
        )
