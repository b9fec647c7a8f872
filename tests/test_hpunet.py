"""HPU-Net: channel plan, latent shapes at the paper's config, top-k and GECO by hand, the plain
ELBO against fcomb's formula, a training step, and what the decoder refuses."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import ambiseg
from ambiseg import data
from ambiseg.errors import CompatibilityError, ConfigError
from ambiseg.interfaces import LatentDraw
from ambiseg.losses import pick_annotator
from ambiseg.methods.hpunet import Geco, HPUNetLatent, hpunet_channels, top_k_mask
from ambiseg.runtime import collate
from ambiseg.train import Trainer


def toy_batch(n: int = 4, size: int = 16) -> dict[str, torch.Tensor]:
    return collate([data.build("synthetic", size=size, num_annotators=2, sizes=(n, 1, 1))[i] for i in range(n)])


def test_channel_plan_has_one_level_per_halving():
    assert hpunet_channels(None, 24) == (24, 48, 96, 192, 192, 192, 192, 192)  # the public code's 8 levels
    assert hpunet_channels(64, 5) == (5, 10, 20, 40, 40, 40, 40)
    assert hpunet_channels(96, 1) == (1, 2, 4, 8, 8, 8)  # 96 -> 3 px at the bottleneck


def test_paper_config_latent_and_sample_shapes():
    torch.manual_seed(0)
    method = ambiseg.build("hpunet", preset="paper-lidc")
    prior = method.prior
    assert prior.channels == (24, 48, 96, 192, 192, 192, 192, 192)
    assert prior.latent_shapes((128, 128)) == ((1, 1, 1), (1, 2, 2), (1, 4, 4), (1, 8, 8))
    assert len(method.transport.stages) == 8 - 4 - 1  # decoder levels 32, 64 and 128 px
    images = torch.rand(1, 1, 128, 128)
    with torch.no_grad():
        state = prior.eval().condition(images)
        assert [tuple(f.shape[1:]) for f in state][-1] == (192, 1, 1)
        assert prior.sample(state, 2).shape == (1, 2, 1 + 4 + 16 + 64)
    out = method.sample(images, 2, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 2, 128, 128) and 0 <= out.min() and out.max() <= 1


def test_top_k_keeps_the_largest_losses_of_the_whole_batch():
    ce = torch.tensor([0.1, 2.0, 3.0, 0.5]).reshape(2, 1, 1, 2)  # image 0: 0.1, 2.0; image 1: 3.0, 0.5
    keep = top_k_mask(ce, 0.5, stochastic=False)  # k = floor(4 x 0.5) = 2 of the batch's 4 pixels
    assert keep.flatten().tolist() == [0.0, 1.0, 1.0, 0.0]
    assert (keep * ce).flatten(1).sum(1).mean() == pytest.approx((2.0 + 3.0) / 2)
    assert top_k_mask(ce, 0.3, stochastic=False).flatten().tolist() == [0.0, 0.0, 1.0, 0.0]  # floor(1.2) = 1
    assert top_k_mask(ce, 1.0, stochastic=True).flatten().tolist() == [1.0] * 4


def test_stochastic_top_k_draws_pixels_in_proportion_to_their_loss():
    ce = torch.tensor([1.0, 3.0, 0.0, 4.0])
    gen = torch.Generator().manual_seed(0)
    counts = sum(top_k_mask(ce, 0.25, stochastic=True, generator=gen) for _ in range(4000))  # k = 1
    assert counts.sum() == 4000 and counts[2] == 0
    torch.testing.assert_close(counts / 4000, torch.tensor([1 / 8, 3 / 8, 0.0, 4 / 8]), atol=0.03, rtol=0)


def test_geco_multiplier_and_moving_average_by_hand():
    geco = Geco(kappa=0.5, decay=0.9, rate=0.1)
    opt = torch.optim.SGD(geco.parameters(), lr=1.0)
    assert geco.multiplier == pytest.approx(1.0)
    rec, kl = torch.tensor(10.0, requires_grad=True), torch.tensor(3.0, requires_grad=True)
    out = geco(rec, 4.0, kl)  # MA = 10 (first value); constraint = 10 - 0.5 x 4 = 8
    assert out["constraint"] == pytest.approx(8.0) and out["loss"].item() == pytest.approx(1.0 * 8.0 + 3.0)
    out["loss"].backward()
    assert rec.grad == pytest.approx(1.0) and kl.grad == pytest.approx(1.0)  # the MA passes gradients to rec
    # lambda = softplus(w)^2 at softplus(w) = 1: d lambda / d w = 2 x 1 x sigmoid(w) = 2 (1 - 1/e);
    # the gradient reaching w is scaled by -rate: -0.1 x 8 x 2 (1 - 1/e)
    step = 0.1 * 8.0 * 2 * (1 - 1 / math.e)
    assert geco.raw.grad.item() == pytest.approx(-step, rel=1e-5)
    opt.step()  # gradient ascent on lambda: w <- w + step
    w = math.log(math.e - 1) + step
    lam = math.log1p(math.exp(w)) ** 2
    assert geco.multiplier.item() == pytest.approx(lam, rel=1e-5) and lam > 1
    out = geco(torch.tensor(4.0), 4.0, torch.tensor(0.0))  # MA = 0.9 x 10 + 0.1 x 4 = 9.4
    assert geco.average.item() == pytest.approx(9.4) and out["constraint"] == pytest.approx(7.4)
    assert out["loss"].item() == pytest.approx(lam * 7.4, rel=1e-5)
    geco.eval()  # no update outside training
    assert geco(torch.tensor(0.0), 4.0, torch.tensor(0.0))["constraint"] == pytest.approx(7.4)
    assert int(geco.updates) == 2


def loss_and_its_parts(transport: dict, seed: int) -> tuple[dict, LatentDraw, torch.Tensor, torch.Tensor]:
    """The smoke method's loss terms on a toy batch, and (replaying the same global draws) its
    posterior draw, the annotation it drew and the per-pixel cross-entropy [B, 1, H, W]."""
    method = ambiseg.build("hpunet", preset="smoke", transport=transport)
    method.begin_stage("joint")
    batch = toy_batch()
    torch.manual_seed(seed)
    terms = method.loss(batch, "joint")
    torch.manual_seed(seed)
    target = pick_annotator(batch["masks"].float())
    draw, h, feats = method.prior.reconstruction(batch["image"], target)
    ce = F.binary_cross_entropy_with_logits(method.transport.logits(h, feats), target, reduction="none")
    return terms, draw, target, ce


def test_without_geco_and_top_k_the_loss_is_fcomb_s_elbo():
    terms, draw, _, ce = loss_and_its_parts({"geco": False, "top_k": 1.0, "beta": 0.5}, seed=3)
    # fcomb: CE summed over pixels + beta KL, batch means
    torch.testing.assert_close(terms["loss"], ce.flatten(1).sum(1).mean() + 0.5 * draw.kl.sum(1).mean())
    assert draw.kl.shape == (4, 2) and (draw.kl >= 0).all()


def test_default_loss_is_geco_on_the_stochastic_top_k_cross_entropy():
    terms, draw, _, ce = loss_and_its_parts({}, seed=5)
    keep = top_k_mask(ce, 0.02, stochastic=True)  # the same global draws, in the same order
    assert keep.sum() == math.floor(4 * 16 * 16 * 0.02)  # 20 of the batch's 1024 pixels
    rec = (keep * ce).flatten(1).sum(1).mean()
    constraint = rec - 0.05 * keep.sum() / 4  # first step: MA = rec; lambda = 1
    torch.testing.assert_close(terms["loss"], constraint + draw.kl.sum(1).mean())
    torch.testing.assert_close(terms["ce"], rec)


def test_one_training_step_moves_the_networks_and_the_multiplier():
    torch.manual_seed(0)
    method = ambiseg.build("hpunet", preset="smoke", train={"joint": {"steps": 1, "batch_size": 4, "lr": 1e-2}})
    before = {k: v.clone() for k, v in method.state_dict().items()}
    history = (
        Trainer(method, data.build("synthetic", size=16, num_annotators=2, sizes=(4, 1, 1)), progress=False, seed=0)
        .fit()
        .history
    )
    assert len(history) == 1 and math.isfinite(history[0]["loss"])
    geco = method.transport.geco
    assert int(geco.updates) == 1 and geco.multiplier.item() != pytest.approx(1.0)
    moved = [k for k, v in method.state_dict().items() if v.dtype.is_floating_point and not torch.equal(v, before[k])]
    assert any(k.startswith("prior.prior_net") for k in moved) and any(
        k.startswith("prior.posterior_net") for k in moved
    )
    assert any(k.startswith("transport.stages") for k in moved)


def test_encoder_runs_once_per_image_when_sampling():
    method = ambiseg.build("hpunet", preset="smoke")
    calls = []
    method.prior.prior_net.encoder[0].register_forward_hook(lambda *a: calls.append(1))
    out = method.sample(torch.rand(2, 1, 16, 16), 6, max_batch=4)
    assert out.shape == (2, 6, 16, 16) and len(calls) == 1


def test_decoder_refuses_other_priors_and_bad_sizes():
    with pytest.raises(CompatibilityError, match="hpunet-latent"):
        ambiseg.compose(
            prior={"name": "probunet-latent", "widths": (4, 8)}, transport="hpunet-decoder", sampler="direct"
        )
    with pytest.raises(ConfigError, match="latent levels need"):
        HPUNetLatent(channels=(4, 8), latent_dims=(1, 1))
    with pytest.raises(ConfigError, match="top_k"):
        ambiseg.build("hpunet", preset="smoke", transport={"top_k": 0.0})
    method = ambiseg.build("hpunet", preset="smoke")
    with pytest.raises(ConfigError, match="divisible by 8"):
        method.sample(torch.rand(1, 1, 20, 20), 1)
