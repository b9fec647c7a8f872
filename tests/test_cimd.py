"""CIMD-style diffusion transport: loss terms, the trained ambiguity latent, sampling."""

from __future__ import annotations

import torch

import ambiseg
from ambiseg import data
from ambiseg.diffusion import DDIM
from ambiseg.methods.cimd import CIMDTransport
from ambiseg.runtime import collate

TINY = {
    "steps": 25,
    "width": 8,
    "mults": (1, 2),
    "blocks": 1,
    "attention": False,
    "encoder_widths": (4, 8),
    "encoder_convs": 1,
}


def toy_batch(n: int = 4, size: int = 16) -> dict[str, torch.Tensor]:
    return collate([data.build("synthetic", size=size, num_annotators=2, sizes=(n, 1, 1))[i] for i in range(n)])


def test_recipe_components_and_stage():
    method = ambiseg.build("cimd")
    assert method.stages == ("transport",) and method.transport.kind == "diffusion"
    assert method.transport.schedule.steps == 1000 and method.transport.latent_dim == 6
    assert method.transport.kl_weight == 1e-3 and type(method.sampler).__name__ == "DDPM"


def test_loss_terms_and_the_latent_nets_are_trained():
    transport = CIMDTransport(**TINY)
    torch.nn.init.normal_(transport.denoiser.head.weight, std=0.1)  # the zero-initialised head would hide z
    terms = transport.loss(toy_batch(), prior=None)
    assert set(terms) == {"loss", "mse", "kl"} and terms["kl"].item() >= 0
    assert torch.allclose(terms["loss"], terms["mse"] + 1e-3 * terms["kl"])
    terms["loss"].backward()
    for net in (transport.prior_net, transport.posterior_net, transport.denoiser.cond_embed):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_without_latent_it_is_a_plain_conditional_ddpm():
    transport = CIMDTransport(**{**TINY, "latent_dim": 0})
    assert not hasattr(transport, "prior_net") and transport.denoiser.cond_embed is None
    terms = transport.loss(toy_batch(), prior=None)
    assert set(terms) == {"loss", "mse"}
    cond = transport.expand(torch.rand(2, 1, 16, 16), 3)
    assert cond["eps_z"] is None and cond["image"].shape == (6, 1, 16, 16)


def test_z_comes_from_the_prior_net_on_image_and_state_at_every_step():
    method = ambiseg.build("cimd", preset="smoke")
    torch.nn.init.normal_(method.transport.denoiser.head.weight, std=0.1)
    seen = []
    method.transport.prior_net.encoder.blocks[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    images = torch.rand(2, 1, 16, 16)
    method.sample(images, 3)
    assert seen == [(6, 2, 16, 16)] * 5  # one prior-net call per ddim step, on (image, x_k) of every sample
    cond = method.transport.expand(images, 3, generator=torch.Generator().manual_seed(0))
    assert cond["eps_z"].shape == (6, 6)
    x, k = torch.randn(6, 1, 16, 16), torch.full((6,), 10)
    other = {**cond, "eps_z": torch.randn(6, 6)}
    assert not torch.allclose(method.transport(x, k, cond), method.transport(x, k, other))


def test_ddim_eta_option_reaches_the_sampler():
    method = ambiseg.build("cimd", preset="smoke", sampler={"name": "ddim", "steps": 3, "eta": 0.5})
    assert isinstance(method.sampler, DDIM) and method.sampler.eta == 0.5 and method.sampler.nfe == 3


def test_v_prediction_trains_on_v_and_samples_through_eps():
    transport = CIMDTransport(**{**TINY, "latent_dim": 0, "prediction": "v"})
    torch.nn.init.normal_(transport.denoiser.head.weight, std=0.1)
    batch = toy_batch()
    torch.manual_seed(3)
    terms = transport.loss(batch, prior=None)
    torch.manual_seed(3)  # the same annotator, steps and noise by hand
    x0 = 2.0 * batch["masks"][torch.arange(4), torch.randint(2, (4,))].unsqueeze(1).float() - 1.0
    k = transport.train_steps(4, x0.device)
    eps = torch.randn_like(x0)
    xk = transport.schedule.q_sample(x0, k, eps)
    out = transport.denoise(xk, k, batch["image"].float(), None)
    torch.testing.assert_close(terms["mse"], torch.nn.functional.mse_loss(out, transport.schedule.velocity(x0, k, eps)))
    cond = transport.expand(batch["image"].float(), 1)
    torch.testing.assert_close(transport(xk, k, cond), transport.schedule.eps_from_velocity(xk, k, out))
