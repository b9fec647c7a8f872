"""The `LatentPrior` interface: cVAE decoders take any latent prior of a fitting shape."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ambiseg
from ambiseg import data
from ambiseg.errors import CompatibilityError
from ambiseg.methods.latent import DiagonalGaussian
from ambiseg.runtime import collate

FCOMB = {"name": "fcomb", "backbone_options": {"widths": (4, 8), "convs": 1}, "features": 4}


class FixedGaussian(ambiseg.LatentPrior):
    """p(z) = N(mu, I) over [dim] whatever the image; q(z | image, mask) from a 1x1 conv, pooled."""

    def __init__(self, dim: int = 5) -> None:
        super().__init__()
        self.dim, self.mu = dim, nn.Parameter(torch.zeros(dim))
        self.posterior_net = nn.Conv2d(2, 2 * dim, 1)

    def sample(self, state, num_samples, *, generator=None):
        eps = torch.randn(state.shape[0], num_samples, self.dim, generator=generator)
        return self.mu + eps

    def posterior_draw(self, images, mask):
        mu, log_sigma = self.posterior_net(torch.cat([images, mask], dim=1)).mean((2, 3)).chunk(2, dim=1)
        q = DiagonalGaussian(mu, log_sigma)
        return ambiseg.LatentDraw(q.rsample(), q.kl(DiagonalGaussian(self.mu.expand_as(mu), 0 * mu)).unsqueeze(1))

    def latent_shapes(self, size):
        return ((self.dim,),)


def toy_batch(n: int = 4, size: int = 16) -> dict[str, torch.Tensor]:
    return collate([data.build("synthetic", size=size, num_annotators=2, sizes=(n, 1, 1))[i] for i in range(n)])


def test_fcomb_trains_and_samples_with_a_custom_latent_prior():
    torch.manual_seed(0)
    method = ambiseg.compose(prior=FixedGaussian(), transport=FCOMB, sampler="direct")
    assert method.transport.latent_dim == 5  # sized by the prior
    params = method.begin_stage("joint")
    terms = method.loss(toy_batch(), "joint")
    assert set(terms) == {"loss", "ce", "kl"} and all(torch.isfinite(v) for v in terms.values())
    terms["loss"].backward()
    decoder = list(method.transport.fcomb.parameters())
    assert all(p.grad is not None for p in decoder) and any(p.grad.abs().sum() > 0 for p in decoder)
    assert method.prior.posterior_net.weight.grad.abs().sum() > 0  # the KL and CE reach the posterior
    assert all(any(p is q for q in params) for p in [*decoder, method.prior.mu])  # the joint stage trains both
    out = method.sample(torch.rand(2, 1, 16, 16), 3, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 3, 16, 16) and out.min() >= 0 and out.max() <= 1


def one_line(err: pytest.ExceptionInfo[CompatibilityError]) -> str:
    assert "\n" not in str(err.value)
    return str(err.value)


def test_fcomb_refuses_a_non_latent_prior_in_one_line():
    with pytest.raises(CompatibilityError, match="needs a LatentPrior") as err:
        ambiseg.compose(prior="noise", transport=FCOMB, sampler="direct")
    assert "NoisePrior" in one_line(err)


def test_latent_priors_of_the_wrong_size_are_refused_in_one_line():
    with pytest.raises(CompatibilityError, match="latent_dim=6 but its prior has latent_dim=5") as err:
        ambiseg.compose(prior=FixedGaussian(5), transport={**FCOMB, "latent_dim": 6}, sampler="direct")
    one_line(err)
    phiseg = {"name": "phiseg-latent", "base_width": 2, "resolution_levels": 3, "latent_levels": 2}
    with pytest.raises(CompatibilityError, match="one flat latent") as err:
        ambiseg.compose(prior=phiseg, transport=FCOMB, sampler="direct")
    one_line(err)
    with pytest.raises(CompatibilityError, match="spatial latent levels") as err:
        ambiseg.compose(prior=FixedGaussian(), transport="phiseg-likelihood", sampler="direct")
    one_line(err)


def test_builtin_posterior_draws_are_packed_like_samples():
    images, mask = torch.rand(2, 1, 16, 16), (torch.rand(2, 1, 16, 16) > 0.5).float()
    for spec in (
        {"name": "probunet-latent", "widths": (4, 8), "convs": 1},
        {"name": "phiseg-latent", "base_width": 2, "resolution_levels": 4, "latent_levels": 3},
    ):
        prior = ambiseg.compose(
            prior=spec, transport=FCOMB if "probunet" in spec["name"] else "phiseg-likelihood", sampler="direct"
        ).prior
        assert isinstance(prior, ambiseg.LatentPrior) and prior.draws == "latent"
        shapes = prior.latent_shapes((16, 16))
        draw = prior.posterior_draw(images, mask)
        size = sum(torch.Size(s).numel() for s in shapes)
        assert draw.z.shape == (2, size) and draw.kl.shape == (2, len(shapes)) and (draw.kl >= 0).all()
        assert prior.sample(prior.condition(images), 3).shape == (2, 3, size)
