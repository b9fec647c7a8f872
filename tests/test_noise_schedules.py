"""Noise schedules: exact tables of linear and cosine, the transport's `schedule` option, and the
schedule handed to the samplers by the transport rather than read from it."""

from __future__ import annotations

import math

import pytest
import torch

import ambiseg
from ambiseg.diffusion import DDIM, DDPM, DiffusionTransport
from ambiseg.errors import CompatibilityError, ConfigError, UnknownNameError
from ambiseg.methods.cimd import ConditionalDDPM
from ambiseg.noise_schedules import CosineSchedule, LinearSchedule, cosine_betas, linear_betas
from ambiseg.registry import noise_schedules

TINY = {"steps": 25, "width": 8, "mults": (1, 2), "blocks": 1, "attention": False}


class Oracle(DiffusionTransport):
    """The exact eps that maps a known x0 to the current state."""

    def __init__(self, x0: torch.Tensor, **kw) -> None:
        super().__init__(**kw)
        self.x0 = x0

    def forward(self, x, t, cond):
        return self.schedule.predict_eps(x, t, self.x0)


def test_linear_schedule_is_todays_table():
    for steps in (25, 100, 1000):
        schedule = noise_schedules.create("linear", steps=steps)
        assert isinstance(schedule, LinearSchedule) and schedule.steps == steps
        assert torch.equal(schedule.betas[1:], linear_betas(steps)) and schedule.betas[0] == 0
    custom = noise_schedules.create("linear", steps=50, beta_start=1e-3, beta_end=0.01)
    assert torch.equal(custom.betas[1:], linear_betas(50, start=1e-3, end=0.01))


def test_cosine_schedule_by_hand():
    # T = 2, s = 0: f(k) = cos^2(pi k / 4) = 1, 1/2, 0 -> betas 1/2 and 1 (clipped to max_beta)
    betas = cosine_betas(2, offset=0.0, max_beta=0.9)
    assert torch.allclose(betas, torch.tensor([0.5, 0.9], dtype=torch.float64), atol=1e-15)
    schedule = CosineSchedule(1000)
    k = torch.arange(1001, dtype=torch.float64)
    f = torch.cos((k / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2
    unclipped = schedule.betas < 0.999
    assert unclipped[:990].all() and schedule.betas[-1].item() == pytest.approx(0.999)
    assert torch.allclose(schedule.alpha_bar[unclipped], (f / f[0])[unclipped], rtol=1e-10, atol=0)
    assert (schedule.betas[1:].diff() >= 0).all() and (schedule.alpha_bar.diff() < 0).all()


@pytest.mark.parametrize(
    "options, match",
    [
        ({"offset": -0.1}, "offset >= 0"),
        ({"max_beta": 1.0}, "max_beta < 1"),
        ({"steps": 0}, "steps must be in 1.."),
    ],
)
def test_bad_cosine_options_are_one_line(options, match):
    with pytest.raises(ConfigError, match=match) as info:
        noise_schedules.create("cosine", **{"steps": 10, **options})
    assert "\n" not in str(info.value)


def test_the_transport_schedule_option():
    assert isinstance(ConditionalDDPM(**TINY).schedule, LinearSchedule)
    cosine = ConditionalDDPM(**TINY, schedule={"name": "cosine", "offset": 0.02})
    assert isinstance(cosine.schedule, CosineSchedule) and cosine.schedule.steps == 25
    assert torch.equal(cosine.schedule.betas[1:], cosine_betas(25, offset=0.02))
    # a config written before schedules existed names beta_start/beta_end: same table
    old = ConditionalDDPM(**TINY, beta_start=1e-4, beta_end=0.02)
    assert torch.equal(old.schedule.alpha_bar, ConditionalDDPM(**TINY).schedule.alpha_bar)
    assert torch.equal(
        ConditionalDDPM(**TINY, beta_end=0.01).schedule.betas[1:], linear_betas(25, start=1e-4, end=0.01)
    )


def test_bad_schedule_options_name_the_fix():
    with pytest.raises(UnknownNameError, match="unknown noise schedule 'cosin' \\(did you mean 'cosine'\\?\\)"):
        ConditionalDDPM(**TINY, schedule="cosin")
    with pytest.raises(ConfigError, match="beta_start belong to the linear schedule, not to 'cosine'"):
        ConditionalDDPM(**TINY, schedule="cosine", beta_start=1e-4)
    with pytest.raises(ConfigError, match="'steps' is set outside the spec \\(steps=25\\)"):
        ConditionalDDPM(**TINY, schedule={"name": "cosine", "steps": 10})
    with pytest.raises(ConfigError, match="noise schedule 'cosine' has no option 'ofset'.*did you mean 'offset'"):
        ConditionalDDPM(**TINY, schedule={"name": "cosine", "ofset": 0.1})
    with pytest.raises(ConfigError, match="expected a noise schedule name or a dict"):
        ConditionalDDPM(**TINY, schedule=3)


@pytest.mark.parametrize("sampler", [DDPM(), DDIM(6)])
def test_samplers_follow_the_schedule_they_are_handed(sampler):
    x0 = torch.rand(2, 1, 4, 4, dtype=torch.float64) * 2 - 1
    field = Oracle(x0, steps=30, schedule="cosine")
    options = field.sampler_options()
    assert options == {"schedule": field.schedule, "start": 30}
    gen = torch.Generator().manual_seed(0)
    start = torch.randn(x0.shape, dtype=torch.float64, generator=gen)
    torch.testing.assert_close(sampler(field, start, None, generator=gen, **options), x0, atol=1e-10, rtol=0)
    linear = noise_schedules.create("linear", steps=30)  # the oracle's eps are cosine's: a linear walk misses x0
    assert not torch.allclose(sampler(field, start, None, generator=gen, schedule=linear), x0, atol=1e-3)
    with pytest.raises(CompatibilityError, match="needs the transport's noise schedule"):
        sampler(field, start, None)


def test_swapping_the_schedule_changes_training_and_sampling_only():
    def run(schedule: str):
        torch.manual_seed(0)
        method = ambiseg.build("cimd", preset="smoke", transport={"schedule": schedule})
        torch.nn.init.normal_(
            method.transport.denoiser.head.weight, std=0.1, generator=torch.Generator().manual_seed(1)
        )
        batch = {"image": torch.rand(2, 1, 16, 16), "masks": (torch.rand(2, 2, 16, 16) > 0.5).to(torch.uint8)}
        torch.manual_seed(3)
        loss = method.loss(batch, "transport")["loss"]
        samples = method.sample(batch["image"], 2, generator=torch.Generator().manual_seed(4))
        return method, loss, samples

    linear, loss_linear, samples_linear = run("linear")
    cosine, loss_cosine, samples_cosine = run("cosine")
    assert all(torch.equal(a, b) for a, b in zip(linear.parameters(), cosine.parameters(), strict=True))
    assert not torch.equal(loss_linear, loss_cosine) and not torch.equal(samples_linear, samples_cosine)
    assert cosine.config["transport"]["schedule"] == "cosine"
    assert ambiseg.Method.from_config(cosine.config).transport.schedule.steps == 25


def test_a_truncated_diffusion_starts_from_the_schedules_noise_level():
    method = ambiseg.build("tdpm", preset="smoke", transport={"schedule": "cosine"})
    estimate = torch.rand(2, 1, 4, 4)
    state = method.transport.initial_state(estimate, generator=torch.Generator().manual_seed(0))
    eps = torch.randn(estimate.shape, generator=torch.Generator().manual_seed(0))
    a = float(CosineSchedule(25).alpha_bar[8])  # smoke: truncation 8 of 25 steps
    torch.testing.assert_close(state, a**0.5 * (2 * estimate - 1) + (1 - a) ** 0.5 * eps)
    assert method.transport.sampler_options()["start"] == 8


def test_schedules_are_listed():
    assert {"linear", "cosine"} <= set(ambiseg.list_components()["noise_schedules"])
