"""tdpm: GTR prior + the cond-ddpm diffusion transport truncated at step k, trained in two stages."""

from __future__ import annotations

import torch

import ambiseg
from ambiseg import data
from ambiseg.methods.cimd import CIMDTransport, ConditionalDDPM
from ambiseg.methods.gtr import GTRPrior
from ambiseg.train import Trainer


def test_recipe_is_a_composition_of_existing_parts():
    method = ambiseg.build("tdpm")
    assert isinstance(method.prior, GTRPrior) and type(method.transport) is ConditionalDDPM
    assert method.stages == ("prior", "transport") and method.transport.latent_dim == 0
    assert method.transport.start_step == 300 and method.transport.schedule.steps == 1000
    same = ambiseg.compose(prior="gtr", transport={"name": "cond-ddpm", "truncation": 300}, sampler="ddpm")
    assert same.config["transport"] == method.config["transport"] and same.stages == method.stages


def test_cimd_without_its_latent_is_the_same_network_as_cond_ddpm():
    """Runs saved before `cond-ddpm` existed name `cimd` with latent_dim=0: they load and sample alike."""
    torch.manual_seed(0)
    plain = ambiseg.build("tdpm", preset="smoke")
    torch.manual_seed(0)
    old = ambiseg.build(
        "tdpm", preset="smoke", transport={**plain.config["transport"], "name": "cimd", "latent_dim": 0}
    )
    assert (
        isinstance(old.transport, CIMDTransport)
        and old.transport.state_dict().keys() == plain.transport.state_dict().keys()
    )
    old.load_state_dict(plain.state_dict())
    image = torch.rand(1, 1, 16, 16)
    a = plain.sample(image, 2, generator=torch.Generator().manual_seed(3))
    b = old.sample(image, 2, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    options = ambiseg.registry.transports.get("cond-ddpm").make_config().__dataclass_fields__
    assert "latent_dim" not in options and "_cond_dim" not in options and "width" in options  # no private options


def test_sampling_runs_k_denoiser_steps_from_a_gtr_estimate():
    method = ambiseg.build("tdpm", preset="smoke", sampler="ddpm")
    calls = []
    method.transport.denoiser.register_forward_hook(lambda m, i, o: calls.append(i[0].shape))
    out = method.sample(torch.rand(2, 1, 16, 16), 3)
    assert out.shape == (2, 3, 16, 16) and out.min() >= 0 and out.max() <= 1
    assert calls == [(6, 2, 16, 16)] * 8  # truncation 8 of 25 steps; image + state channels


def test_both_stages_train_and_the_prior_is_frozen_in_the_second():
    torch.manual_seed(0)
    method = ambiseg.build(
        "tdpm",
        preset="smoke",
        train={
            "prior": {"steps": 25, "batch_size": 4, "lr": 1e-2},
            "transport": {"steps": 40, "batch_size": 4, "lr": 3e-3},
        },
    )
    frozen = {}
    method.transport.denoiser.register_forward_pre_hook(
        lambda m, a: None if "prior" in frozen else frozen.update(prior=[p.clone() for p in method.prior.parameters()])
    )
    history = (
        Trainer(method, data.build("synthetic", size=16, num_annotators=2, sizes=(4, 1, 1)), progress=False, seed=0)
        .fit()
        .history
    )
    for stage in method.stages:
        losses = [h["loss"] for h in history if h["stage"] == stage]
        assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5, stage
    assert all(torch.equal(a, b) for a, b in zip(frozen["prior"], method.prior.parameters(), strict=True))
