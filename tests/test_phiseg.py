"""PHiSeg: level rule, hierarchical latents, the residual CE + 4^l KL loss, sampling."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import ambiseg
from ambiseg import data
from ambiseg.errors import CompatibilityError, ConfigError
from ambiseg.losses import pick_annotator
from ambiseg.methods.phiseg import PHiSegLatent, PHiSegLikelihood, phiseg_levels
from ambiseg.runtime import collate


def toy_batch(n: int = 4, size: int = 16) -> dict[str, torch.Tensor]:
    return collate([data.build("synthetic", size=size, num_annotators=2, sizes=(n, 1, 1))[i] for i in range(n)])


@pytest.mark.parametrize(
    ("size", "levels"),
    [
        (None, (7, 5)),
        (128, (7, 5)),
        (256, (8, 5)),
        (64, (6, 4)),
        (32, (5, 3)),
        (16, (4, 2)),
        (96, (6, 4)),
        (12, (3, 1)),
    ],
)
def test_level_rule(size, levels):
    assert phiseg_levels(size) == levels


def test_explicit_levels_and_bad_levels():
    assert phiseg_levels(128, 4, 2) == (4, 2)
    with pytest.raises(ConfigError, match="latent_levels"):
        phiseg_levels(64, 3, 4)


def test_paper_latent_resolutions_at_128px():
    prior = PHiSegLatent(image_size=128, base_width=2)
    lik = PHiSegLikelihood(image_size=128)
    with pytest.raises(CompatibilityError, match="compose it"):
        lik.unpack(torch.zeros(1, 2), (128, 128))
    lik.check_prior(prior)  # sizes and builds the likelihood from the prior's latents
    assert lik.options == prior.options
    state = prior.sample(prior.condition(torch.rand(1, 1, 128, 128)), 2)
    assert state.shape == (1, 2, 2 * (32**2 + 16**2 + 8**2 + 4**2 + 2**2))
    zs = lik.unpack(state[0], (128, 128))
    assert [tuple(z.shape[1:]) for z in zs] == [(2, 32, 32), (2, 16, 16), (2, 8, 8), (2, 4, 4), (2, 2, 2)]
    assert prior.latent_shapes((128, 128)) == tuple(tuple(z.shape[1:]) for z in zs)


def test_prior_conditions_each_level_on_the_given_coarser_sample():
    prior = PHiSegLatent(resolution_levels=4, latent_levels=3, base_width=4).eval()
    images = torch.rand(2, 1, 16, 16)
    zs, posts = prior.posterior(images, (torch.rand(2, 1, 16, 16) > 0.5).float())
    assert [tuple(z.shape) for z in zs] == [(2, 2, 8, 8), (2, 2, 4, 4), (2, 2, 2, 2)]
    base = prior.prior_given(images, zs)
    moved = prior.prior_given(images, [zs[0], zs[1] + 1.0, zs[2]])
    assert torch.equal(base[1].mu, moved[1].mu) and torch.equal(base[2].mu, moved[2].mu)
    assert not torch.allclose(base[0].mu, moved[0].mu)  # only the level above the changed sample moves
    assert all((q.kl(p) >= 0).all() for q, p in zip(posts, base, strict=True))


def test_loss_is_residual_ce_plus_4_pow_l_weighted_kl():
    method = ambiseg.build("phiseg", preset="smoke")
    method.begin_stage("joint")
    batch = toy_batch()
    torch.manual_seed(3)
    terms = method.loss(batch, "joint")
    torch.manual_seed(3)
    target = pick_annotator(batch["masks"].float())
    zs, posts = method.prior.posterior(batch["image"], target)
    priors = method.prior.prior_given(batch["image"], zs)
    logits = method.transport.decode(zs, (16, 16))  # finest first
    ce = [F.binary_cross_entropy_with_logits(sum(logits[lvl:]), target, reduction="sum") / 4 for lvl in range(2)]
    kl = [q.kl(p).mean() for q, p in zip(posts, priors, strict=True)]
    assert torch.allclose(terms["loss"], ce[0] + ce[1] + kl[0] + 4 * kl[1], rtol=1e-5)
    assert torch.allclose(terms["ce"], ce[0], rtol=1e-5)


def test_features_once_per_image_and_sampling_shapes():
    method = ambiseg.build("phiseg", preset="smoke")
    calls = []
    method.prior.prior_net.pre[0].register_forward_hook(lambda *a: calls.append(1))
    out = method.sample(torch.rand(2, 1, 16, 16), 6, max_batch=4)
    assert out.shape == (2, 6, 16, 16) and out.min() >= 0 and out.max() <= 1
    assert len(calls) == 1


def test_likelihood_follows_the_prior_and_refuses_what_contradicts_it():
    # levels and latent channels are declared once, on the prior; base_width is the likelihood's own
    method = ambiseg.compose(
        prior={"name": "phiseg-latent", "base_width": 4, "latent_levels": 1, "latent_channels": 3},
        transport={"name": "phiseg-likelihood", "base_width": 2},
        sampler="direct",
        image_size=16,
    )
    assert method.transport.options == {
        "resolution_levels": 4,
        "latent_levels": 1,
        "base_width": 2,
        "latent_channels": 3,
    }
    assert method.sample(torch.rand(1, 1, 16, 16), 2).shape == (1, 2, 16, 16)
    assert ambiseg.Method.from_config(method.config).transport.options == method.transport.options
    default = ambiseg.build("phiseg", preset="smoke")
    assert default.transport.options == default.prior.options
    assert default.config["transport"]["latent_levels"] is None  # not repeated in the config
    with pytest.raises(CompatibilityError, match="same image_size, levels") as err:
        ambiseg.compose(
            prior={"name": "phiseg-latent", "base_width": 4},
            transport={"name": "phiseg-likelihood", "latent_levels": 1},
            sampler="direct",
            image_size=16,
        )
    assert "\n" not in str(err.value) and "'latent_levels': 1" in str(err.value)
    with pytest.raises(CompatibilityError, match="phiseg-latent"):
        ambiseg.compose(
            prior="noise", transport={"name": "phiseg-likelihood", "base_width": 4, "image_size": 16}, sampler="direct"
        )
    with pytest.raises(CompatibilityError, match="spatial latent levels"):
        ambiseg.compose(
            prior={"name": "probunet-latent", "widths": (4, 8)}, transport="phiseg-likelihood", sampler="direct"
        )
    method = ambiseg.build("phiseg", image_size=32, prior={"base_width": 2}, transport={"base_width": 2})
    with pytest.raises(ConfigError, match="divisible by 16"):
        method.sample(torch.rand(1, 1, 24, 24), 1)
