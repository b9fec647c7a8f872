"""GTR prior: the Gaussian, its sampling, its loss, and one backbone pass per image group."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Independent, LowRankMultivariateNormal

import ambiseg
from ambiseg.errors import ConfigError, DataError
from ambiseg.methods.gtr import DIAG_EPS, LOSS_FORMS, GTRPrior, GTRState

TINY = {"widths": (8, 16), "features": 8, "rank": 2, "mc_samples": 4}


def _batch(b=2, a=3, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.rand(b, 1, size, size, generator=g),
        "masks": (torch.rand(b, a, size, size, generator=g) > 0.5).to(torch.uint8),
    }


def test_condition_gives_the_gaussian_of_each_image():
    prior = GTRPrior(**TINY)
    state = prior.condition(torch.rand(3, 1, 16, 8))
    assert state.mean.shape == (3, 128) and state.cov_diag.shape == (3, 128)
    assert state.cov_factor.shape == (3, 128, 2) and state.size == (16, 8)
    assert (state.cov_diag > DIAG_EPS * 0.999).all()
    dist = state.distribution
    assert isinstance(dist, LowRankMultivariateNormal) and dist.batch_shape == (3,) and dist.event_shape == (128,)


def test_sample_shape_range_and_seeded_determinism():
    prior = GTRPrior(**TINY).eval()
    state = prior.condition(torch.rand(2, 1, 16, 16))
    a = prior.sample(state, 5, generator=torch.Generator().manual_seed(3))
    b = prior.sample(state, 5, generator=torch.Generator().manual_seed(3))
    c = prior.sample(state, 5, generator=torch.Generator().manual_seed(4))
    assert a.shape == (2, 5, 1, 16, 16) and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b) and not torch.allclose(a, c)


def _state(rank: int) -> GTRState:
    mean = torch.tensor([[0.5, -1.0, 2.0]])
    factor = torch.tensor([[[1.0], [0.5], [-1.0]]]) if rank else None
    return GTRState(mean, torch.tensor([[0.2, 0.3, 0.1]]), factor, (1, 3))


def test_draws_have_the_distributions_mean_and_covariance():
    state = _state(rank=1)
    cov = torch.tensor([[1.0, 0.5, -1.0], [0.5, 0.25, -0.5], [-1.0, -0.5, 1.0]]) + torch.diag(
        torch.tensor([0.2, 0.3, 0.1])
    )
    assert torch.allclose(state.distribution.covariance_matrix[0], cov)
    x = state.draw(200_000, generator=torch.Generator().manual_seed(0))[0]
    assert torch.allclose(x.mean(0), state.mean[0], atol=0.01)
    assert torch.allclose(torch.cov(x.T), cov, atol=0.02)


def test_rank_zero_is_a_diagonal_gaussian():
    state = _state(rank=0)
    assert isinstance(state.distribution, Independent)
    x = state.draw(100_000, generator=torch.Generator().manual_seed(0))[0]
    assert torch.allclose(torch.cov(x.T), torch.diag(torch.tensor([0.2, 0.3, 0.1])), atol=0.01)
    prior = GTRPrior(**{**TINY, "rank": 0})
    assert prior.factor_head is None
    assert prior.condition(torch.rand(1, 1, 16, 16)).cov_factor is None
    out = prior.loss(_batch())
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and prior.mean_head.weight.grad.abs().sum() > 0


def test_antithetic_draws_mirror_about_the_mean():
    state = _state(rank=1)
    x = state.draw(6, antithetic=True, generator=torch.Generator().manual_seed(0))
    dev = x - state.mean.unsqueeze(1)
    assert torch.allclose(dev[:, :3], -dev[:, 3:])


def test_loss_forms_on_known_log_likelihoods():
    log_lik = torch.tensor([[math.log(0.5), math.log(0.1)]])
    assert torch.allclose(LOSS_FORMS["logsumexp"](log_lik), torch.tensor([-math.log(0.3)]))
    assert torch.allclose(LOSS_FORMS["mean-nll"](log_lik), torch.tensor([-(math.log(0.5) + math.log(0.1)) / 2]))


@pytest.mark.parametrize("loss_form", ["logsumexp", "mean-nll"])
def test_loss_is_the_mc_estimate_against_one_random_annotator(loss_form):
    torch.manual_seed(0)
    prior = GTRPrior(**{**TINY, "loss_form": loss_form})
    batch = _batch(b=3, a=4)
    torch.manual_seed(11)
    out = prior.loss(batch)
    # replay the same random stream by hand: annotator picks, then the antithetic draws
    torch.manual_seed(11)
    pick = torch.randint(4, (3,))
    target = batch["masks"][torch.arange(3), pick].float().flatten(1)
    state = prior.condition(batch["image"])
    logits = state.draw(4, antithetic=True)
    log_lik = -F.binary_cross_entropy_with_logits(logits, target[:, None].expand_as(logits), reduction="none").sum(-1)
    expected = {"logsumexp": -(torch.logsumexp(log_lik, 1) - math.log(4)), "mean-nll": -log_lik.mean(1)}[loss_form]
    assert torch.allclose(out["loss"], expected.mean())
    assert torch.allclose(out["nll"], -log_lik.mean(1).mean())
    assert out["nll_mc"] <= out["nll"] + 1e-4  # Jensen: -log mean p <= mean -log p
    out["loss"].backward()
    for name, p in prior.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_bad_options_and_batches_raise_clear_errors():
    with pytest.raises(ConfigError, match="loss_form.*logsumexp, mean-nll"):
        GTRPrior(**{**TINY, "loss_form": "mean_nll"})
    with pytest.raises(ConfigError, match="rank"):
        GTRPrior(**{**TINY, "rank": -1})
    with pytest.raises(ConfigError, match="must be even"):
        GTRPrior(**{**TINY, "mc_samples": 3})
    GTRPrior(**{**TINY, "mc_samples": 3, "antithetic": False})
    with pytest.raises(ConfigError, match="features"):
        GTRPrior(**{**TINY, "features": 0})
    with pytest.raises(ConfigError, match="has no option 'ranks'.*did you mean 'rank'"):
        ambiseg.build("act-gtr", preset="smoke", prior={"ranks": 3})
    prior = GTRPrior(**TINY)
    with pytest.raises(DataError, match="masks"):
        prior.loss({"image": torch.rand(2, 1, 16, 16)})
    with pytest.raises(DataError, match=r"\[B, A, H, W\]"):
        prior.loss({"image": torch.rand(2, 1, 16, 16), "masks": torch.ones(2, 16, 16)})


def test_method_sample_runs_the_backbone_once_per_image_group():
    method = ambiseg.build("atfm", preset="smoke", max_batch=8)
    calls = []
    method.prior.backbone.register_forward_hook(lambda *args: calls.append(1))
    images = torch.rand(2, 1, 16, 16)
    out = method.sample(images, 16, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 16, 16, 16)
    assert len(calls) == 1  # 16 samples in 4 chunks of 4 per image, one GTR pass
    method.sample(torch.rand(3, 1, 16, 16), 2, generator=torch.Generator().manual_seed(0), max_batch=2)
    assert len(calls) == 1 + 2  # 3 images in groups of at most 2


def test_smp_backbone_spec_is_accepted():
    prior = GTRPrior(backbone="smp:Unet:resnet18", features=8, rank=2, mc_samples=2).eval()
    state = prior.condition(torch.rand(2, 1, 32, 32))
    assert state.mean.shape == (2, 32 * 32) and state.cov_factor.shape == (2, 32 * 32, 2)


def test_centred_factor_has_no_global_direction():
    torch.manual_seed(0)
    plain, centred = GTRPrior(**TINY), GTRPrior(**TINY, centre_factor=True)
    centred.load_state_dict(plain.state_dict())
    images = torch.rand(2, 1, 16, 16)
    a, b = plain.condition(images), centred.condition(images)
    assert a.cov_factor.mean(dim=1).abs().max() > 1e-3  # the bias alone makes a global column
    assert b.cov_factor.mean(dim=1).abs().max() < 1e-6
    assert torch.allclose(b.cov_factor, a.cov_factor - a.cov_factor.mean(dim=1, keepdim=True))
    assert torch.equal(a.mean, b.mean) and torch.equal(a.cov_diag, b.cov_diag)


def test_mean_weight_adds_the_fit_of_the_mean_to_the_annotator_frequency():
    torch.manual_seed(0)
    prior = GTRPrior(**TINY)
    batch = _batch(b=2, a=4)
    torch.manual_seed(3)
    base = prior.loss(batch)
    prior.mean_weight = 0.5
    torch.manual_seed(3)
    weighted = prior.loss(batch)
    soft = batch["masks"].float().mean(1).flatten(1)
    fit = (
        F.binary_cross_entropy_with_logits(prior.condition(batch["image"]).mean, soft, reduction="none").sum(-1).mean()
    )
    assert torch.allclose(base["mean_fit"], fit) and torch.allclose(weighted["loss"], base["loss"] + 0.5 * fit)
    with pytest.raises(ConfigError, match="mean_weight"):
        GTRPrior(**TINY, mean_weight=-1)


def test_tempered_sampling_accepts_the_mixed_dtypes_of_cuda_autocast():
    """Under CUDA bf16 autocast the mean head returns bf16 while exp keeps the diagonal (and so the
    draw) in fp32; the tempered sample must not mix the two in one lerp (a crash found on an H200)."""
    prior = GTRPrior(**TINY, temperature=0.6).eval()
    fp32 = _state(rank=1)
    mixed = GTRState(fp32.mean.bfloat16(), fp32.cov_diag, fp32.cov_factor, fp32.size)
    out = prior.sample(mixed, 4, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 4, 1, 1, 3) and out.dtype == torch.float32 and torch.isfinite(out).all()


def test_temperature_scales_the_deviation_from_the_mean_and_not_the_loss():
    images, batch = torch.rand(2, 1, 16, 16), _batch()
    torch.manual_seed(0)
    hot = GTRPrior(**TINY).eval()
    cold = GTRPrior(**TINY, temperature=0.5).eval()
    cold.load_state_dict(hot.state_dict())
    state = hot.condition(images)
    full = torch.logit(hot.sample(state, 6, generator=torch.Generator().manual_seed(1)).double(), eps=1e-12)
    half = torch.logit(cold.sample(state, 6, generator=torch.Generator().manual_seed(1)).double(), eps=1e-12)
    mean = state.mean.view(2, 1, 1, 16, 16).double()
    torch.testing.assert_close(half - mean, 0.5 * (full - mean), atol=1e-4, rtol=1e-4)
    torch.manual_seed(2)
    loss_hot = hot.loss(batch)["loss"]
    torch.manual_seed(2)
    assert torch.equal(cold.loss(batch)["loss"], loss_hot)
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ConfigError, match="temperature"):
            GTRPrior(**TINY, temperature=bad)
