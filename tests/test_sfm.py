"""SFM transport and identity transport: velocity field, batched loss, semantic-consistency gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import ambiseg
from ambiseg.errors import CompatibilityError, ConfigError
from ambiseg.losses import hard_dice, soft_dice
from ambiseg.methods.identity import IdentityTransport
from ambiseg.methods.noise import NoisePrior
from ambiseg.methods.sfm import LUMA, SFMTransport

TINY = {"width": 8, "mults": (1, 2), "blocks": 1, "groups": 4, "heads": 1, "head_dim": 8}


def _batch(b=2, a=3, size=16, channels=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.rand(b, channels, size, size, generator=g),
        "masks": (torch.rand(b, a, size, size, generator=g) > 0.5).to(torch.uint8),
        "id": ["x"] * b,
    }


def _perturb_head(sfm: SFMTransport) -> None:
    with torch.no_grad():
        sfm.net.head.weight.normal_(std=0.1, generator=torch.Generator().manual_seed(1))


def test_dice_terms_on_hand_computed_masks():
    pred = torch.tensor([[[1.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]], [[0.6, 0.2], [0.0, 1.0]]])
    target = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]]])
    assert torch.allclose(hard_dice(pred, target), torch.tensor([2 / 3, 1.0, 1.0]))
    # soft: (2 sum(p y) + 1) / (sum p^2 + sum y^2 + 1)
    expected = torch.tensor([(2 + 1) / (2 + 1 + 1), 1.0, (2 * 1.6 + 1) / (0.36 + 0.04 + 1 + 2 + 1)])
    assert torch.allclose(soft_dice(pred, target), expected)
    over = torch.tensor([[[1.5, 0.0], [0.0, 0.0]]])  # leaving [0, 1] is penalised, not rewarded
    assert soft_dice(over, target[:1] * torch.tensor([[1.0, 0.0], [0.0, 0.0]])) < 1


def test_velocity_shape_and_identity_at_init():
    sfm = SFMTransport(**TINY)
    x, cond = torch.rand(4, 1, 16, 16), torch.rand(4, 1, 16, 16)
    assert torch.equal(sfm(x, torch.rand(4), cond), torch.zeros(4, 1, 16, 16))
    _perturb_head(sfm)
    assert sfm(x, torch.rand(4), cond).shape == (4, 1, 16, 16)
    with pytest.raises(ConfigError, match="needs a time"):
        sfm(x, None, cond)


def test_time_scale_reaches_the_embedding():
    assert SFMTransport(**TINY).net.time_embed[0].scale == 1000.0
    assert SFMTransport(time_scale=1.0, **TINY).net.time_embed[0].scale == 1.0


def test_stem_kernel_and_groups_reach_the_st_net():
    assert SFMTransport(**TINY).net.stem.kernel_size == (7, 7)  # default unchanged: old checkpoints load
    sfm = SFMTransport(**{**TINY, "groups": 1}, stem_kernel=1)
    assert sfm.net.stem.kernel_size == (1, 1) and sfm.net.mid_block1.norm1.num_groups == 1
    with pytest.raises(ConfigError, match="stem_kernel"):
        SFMTransport(stem_kernel=2, **TINY)


def test_rgb_conditioning_keeps_channels_or_uses_luma():
    images = torch.rand(2, 3, 16, 16)
    keep = SFMTransport(in_channels=3, **TINY)
    assert torch.equal(keep.condition(images), images) and keep.net.in_channels == 4
    gray = SFMTransport(in_channels=3, grayscale=True, **TINY)
    expected = sum(w * images[:, i] for i, w in enumerate(LUMA)).unsqueeze(1)
    assert torch.allclose(gray.condition(images), expected) and gray.net.in_channels == 2
    with pytest.raises(ConfigError, match="3-channel images"):
        keep.condition(torch.rand(2, 1, 16, 16))


def test_batched_loss_equals_a_loop_over_annotators():
    torch.manual_seed(0)
    sfm, prior = SFMTransport(alpha=0.5, **TINY), NoisePrior()
    _perturb_head(sfm)
    batch = _batch(b=2, a=3)
    torch.manual_seed(5)
    out = sfm.loss(batch, prior)
    torch.manual_seed(5)  # replay: one prior sample, then one t per image
    x0 = prior.sample(prior.condition(batch["image"]), 1)[:, 0]
    t = torch.rand(2)
    fm, sf = [], []
    for j in range(3):
        x1 = batch["masks"][:, j : j + 1].float()
        tt = t.view(2, 1, 1, 1)
        xt = tt * x1 + (1 - tt) * x0
        v = sfm(xt, t, batch["image"])
        fm.append(F.mse_loss(v, x1 - x0))
        sf.append((1 - soft_dice(xt + v * (1 - tt), x1)).mean())
    fm, sf = torch.stack(fm).mean(), torch.stack(sf).mean()
    assert torch.allclose(out["fm"], fm, atol=1e-6) and torch.allclose(out["sf"], sf, atol=1e-6)
    assert torch.allclose(out["loss"], fm + 0.5 * sf, atol=1e-6)


def _sf_grads(sf_loss: str) -> list[torch.Tensor | None]:
    torch.manual_seed(0)
    sfm = SFMTransport(alpha=1e-3, sf_loss=sf_loss, **TINY)
    _perturb_head(sfm)
    out = sfm.loss(_batch(), NoisePrior())
    assert out["sf"].requires_grad == (sf_loss == "soft")
    if not out["sf"].requires_grad:
        return []
    return torch.autograd.grad(out["sf"], list(sfm.parameters()), allow_unused=True)


def test_soft_semantic_consistency_sends_gradient_into_the_st_net_and_hard_does_not():
    grads = _sf_grads("soft")
    nonzero = [g for g in grads if g is not None and g.abs().sum() > 0]
    assert len(nonzero) > len(grads) // 2
    assert _sf_grads("hard") == []


def test_prior_gets_no_gradient_from_the_transport_loss():
    method = ambiseg.build("atfm", preset="smoke")
    method.transport.loss(_batch(), method.prior)["loss"].backward()
    assert all(p.grad is None for p in method.prior.parameters())
    assert any(p.grad is not None for p in method.transport.parameters())


def test_alpha_zero_loss_is_pure_flow_matching():
    sfm = SFMTransport(alpha=0.0, **TINY)
    _perturb_head(sfm)
    out = sfm.loss(_batch(), NoisePrior())
    assert torch.equal(out["loss"], out["fm"]) and out["sf"] > 0


def test_bad_options_and_incompatible_priors():
    with pytest.raises(ConfigError, match="sf_loss.*soft, hard"):
        SFMTransport(sf_loss="dice", **TINY)
    with pytest.raises(ConfigError, match="alpha"):
        SFMTransport(alpha=-1.0, **TINY)
    with pytest.raises(ConfigError, match="grayscale"):
        SFMTransport(in_channels=2, grayscale=True, **TINY)
    with pytest.raises(CompatibilityError, match="one-channel"):
        ambiseg.compose(prior={"name": "noise", "channels": 2}, transport={"name": "sfm", **TINY}, sampler="euler")
    with pytest.raises(CompatibilityError, match="flow"):
        ambiseg.compose(prior="gtr", transport="identity", sampler="euler")


def test_identity_transport_returns_its_input():
    x = torch.rand(3, 1, 4, 4)
    ident = IdentityTransport()
    assert ident(x, None, None) is x and ident.kind == "map" and not list(ident.parameters())
    assert torch.equal(ident.to_probs(x), x[:, 0])
