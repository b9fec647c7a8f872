"""tdpm: GTR prior + the cimd diffusion transport truncated at step k, trained in two stages."""

from __future__ import annotations

import torch

import ambiseg
from ambiseg import data
from ambiseg.methods.cimd import CIMDTransport
from ambiseg.methods.gtr import GTRPrior
from ambiseg.train import Trainer


def test_recipe_is_a_composition_of_existing_parts():
    method = ambiseg.build("tdpm")
    assert isinstance(method.prior, GTRPrior) and isinstance(method.transport, CIMDTransport)
    assert method.stages == ("prior", "transport") and method.transport.latent_dim == 0
    assert method.transport.start_step == 300 and method.transport.schedule.steps == 1000
    same = ambiseg.compose(prior="gtr", transport={"name": "cimd", "latent_dim": 0, "truncation": 300}, sampler="ddpm")
    assert same.config["transport"] == method.config["transport"] and same.stages == method.stages


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
