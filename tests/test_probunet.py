"""Prob. U-Net: latent prior/posterior nets, fcomb on cached features, loss and sampling."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Independent, Normal, kl_divergence

import ambiseg
from ambiseg import data
from ambiseg.errors import CompatibilityError
from ambiseg.losses import pick_annotator
from ambiseg.methods.latent import DiagonalGaussian
from ambiseg.methods.probunet import FComb, ProbUNetLatent
from ambiseg.runtime import collate


def toy_batch(n: int = 4, size: int = 16) -> dict[str, torch.Tensor]:
    return collate([data.build("synthetic", size=size, num_annotators=2, sizes=(n, 1, 1))[i] for i in range(n)])


def test_diagonal_gaussian_kl_matches_torch_and_is_nonnegative():
    g = torch.Generator().manual_seed(0)
    p = DiagonalGaussian(torch.randn(5, 6, generator=g), torch.randn(5, 6, generator=g))
    q = DiagonalGaussian(torch.randn(5, 6, generator=g), torch.randn(5, 6, generator=g))
    ref = kl_divergence(Independent(Normal(p.mu, p.sigma), 1), Independent(Normal(q.mu, q.sigma), 1))
    assert torch.allclose(p.kl(q), ref, atol=1e-5)
    assert (p.kl(q) >= 0).all() and torch.allclose(p.kl(p), torch.zeros(5), atol=1e-6)


def test_pick_annotator_takes_one_whole_annotation_of_each_image():
    masks = (10 * torch.arange(4.0).view(4, 1, 1, 1) + torch.arange(3.0).view(1, 3, 1, 1)).expand(4, 3, 2, 2)
    torch.manual_seed(0)
    picked = pick_annotator(masks)
    assert picked.shape == (4, 1, 2, 2)
    for b, p in enumerate(picked):
        assert torch.unique(p).numel() == 1 and int(p[0, 0, 0]) // 10 == b


def test_prior_shapes_posterior_input_and_sampling():
    prior = ProbUNetLatent(widths=(4, 8), convs=1)
    images = torch.rand(2, 1, 16, 16)
    seen = []
    prior.posterior_net.encoder.blocks[0].register_forward_hook(lambda m, i, o: seen.append(i[0][:, 1].unique()))
    state = prior.condition(images)
    assert state.mu.shape == (2, 6) and state.log_sigma.shape == (2, 6)
    z = prior.sample(state, 5, generator=torch.Generator().manual_seed(0))
    assert z.shape == (2, 5, 6)
    post = prior.posterior(images, (torch.rand(2, 1, 16, 16) > 0.5).float())
    assert torch.equal(seen[0], torch.tensor([-0.5, 0.5]))  # the mask enters shifted by -0.5
    assert (post.kl(state) >= 0).all()


def test_loss_terms_and_fcomb_decodes_one_latent_per_sample():
    method = ambiseg.build("probunet", preset="smoke", transport={"beta": 3.0})
    terms = method.loss(toy_batch(), "joint")
    assert set(terms) == {"loss", "ce", "kl"} and terms["kl"].item() >= 0
    assert torch.allclose(terms["loss"], terms["ce"] + 3.0 * terms["kl"])
    feats = torch.randn(3, 4, 8, 8)
    out = method.transport(torch.randn(3, 6), None, feats)
    assert out.shape == (3, 1, 8, 8)
    z = torch.randn(1, 6).repeat(3, 1)
    same = method.transport(z, None, feats[:1].repeat(3, 1, 1, 1))
    assert torch.allclose(same[0], same[1]) and torch.allclose(same[0], same[2])


def test_features_once_per_image_and_only_fcomb_per_sample():
    method = ambiseg.build("probunet", preset="smoke")
    calls = {"unet": 0, "fcomb": 0}
    method.transport.unet.register_forward_hook(lambda *a: calls.__setitem__("unet", calls["unet"] + 1))
    method.transport.fcomb.register_forward_hook(lambda *a: calls.__setitem__("fcomb", calls["fcomb"] + 1))
    out = method.sample(torch.rand(2, 1, 16, 16), 6, max_batch=4)
    assert out.shape == (2, 6, 16, 16)
    assert calls == {"unet": 1, "fcomb": 3}  # 2 samples per image per chunk of at most 4 states


def test_fcomb_needs_a_latent_prior_and_takes_its_latent_dim():
    with pytest.raises(CompatibilityError, match="probunet-latent"):
        ambiseg.compose(
            prior="noise",
            sampler="direct",
            transport={"name": "fcomb", "backbone_options": {"widths": (4, 8)}, "features": 4},
        )
    with pytest.raises(CompatibilityError, match="latent_dim"):
        ambiseg.compose(
            prior=ProbUNetLatent(widths=(4, 8), latent_dim=3),
            transport=FComb(latent_dim=6, backbone_options={"widths": (4, 8)}, features=4),
            sampler="direct",
        )
    # latent_dim declared once, on the prior: fcomb is built for it when composed
    method = ambiseg.build("probunet", preset="smoke", prior={"latent_dim": 3})
    assert method.transport.latent_dim == 3 and method.config["transport"]["latent_dim"] is None
    assert method.sample(torch.rand(1, 1, 16, 16), 2).shape == (1, 2, 16, 16)
    assert ambiseg.Method.from_config(method.config).transport.latent_dim == 3
    with pytest.raises(CompatibilityError, match="compose it"):
        FComb(backbone_options={"widths": (4, 8)}, features=4)(torch.randn(1, 3), None, torch.randn(1, 4, 8, 8))
