"""Latent-variable pieces shared by the conditional-VAE baselines (Prob. U-Net, CIMD).

A `DiagonalGaussian` with a closed-form KL and generator-driven sampling, the global-latent
`GaussianEncoder` of the Prob. U-Net (Kohl et al., NeurIPS 2018), which CIMD reuses for its
prior/posterior nets (Rahman et al., CVPR 2023), and the per-step annotator draw of these
methods.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import reduce
from torch import Tensor, nn

from ..backbones import UNetEncoder

__all__ = ["DiagonalGaussian", "GaussianEncoder"]


@dataclass
class DiagonalGaussian:
    """N(mu, diag(exp(log_sigma))^2) over the trailing dims of `mu` (batch dims first).

    `mu` and `log_sigma` share a shape such as [B, D] or [B, C, h, w]; the distribution is a
    product over every dim but the first, so `kl` and `log_prob` return one value per row [B].
    """

    mu: Tensor
    log_sigma: Tensor

    @property
    def sigma(self) -> Tensor:
        return self.log_sigma.exp()

    def rsample(self, *, generator: torch.Generator | None = None) -> Tensor:
        """One reparameterised draw, shaped like `mu` (differentiable in mu and sigma)."""
        eps = torch.randn(self.mu.shape, generator=generator, device=self.mu.device, dtype=self.mu.dtype)
        return self.mu + self.sigma * eps

    def kl(self, other: DiagonalGaussian) -> Tensor:
        """KL(self || other) [B], summed over every non-batch dim; >= 0, 0 iff equal."""
        ratio = (self.log_sigma - other.log_sigma).mul(2).exp()
        mahal = ((self.mu - other.mu) / other.sigma).square()
        terms = 0.5 * (ratio + mahal - 1.0) - (self.log_sigma - other.log_sigma)
        return terms.flatten(1).sum(1)


class GaussianEncoder(nn.Module):
    """Image-like input [B, C, H, W] -> diagonal Gaussian over a global latent [B, latent_dim].

    The encoder half of the plain U-Net (`UNetEncoder`), a spatial mean of its coarsest
    features, and a 1x1 conv to (mu, log sigma): the prior/posterior net of the Prob. U-Net.
    """

    def __init__(
        self,
        in_channels: int,
        latent_dim: int,
        *,
        widths: tuple[int, ...] = (32, 64, 128, 192),
        convs: int = 3,
        norm: str | None = None,
    ) -> None:
        super().__init__()
        self.encoder = UNetEncoder(in_channels, tuple(widths), convs, norm)
        self.head = nn.Conv2d(self.encoder.widths[-1], 2 * latent_dim, 1)
        self.latent_dim = latent_dim

    def forward(self, x: Tensor) -> DiagonalGaussian:
        pooled = reduce(self.encoder(x)[-1], "b c h w -> b c 1 1", "mean")
        mu, log_sigma = self.head(pooled).flatten(1).chunk(2, dim=1)
        return DiagonalGaussian(mu, log_sigma)
