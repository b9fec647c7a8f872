"""Diffusion schedule and the ddpm/ddim samplers: exact answers with oracle denoisers."""

from __future__ import annotations

import pytest
import torch

import ambiseg
from ambiseg.diffusion import DDIM, DDPM, DiffusionSchedule, DiffusionTransport, ddim_timesteps, linear_betas
from ambiseg.errors import CompatibilityError, ConfigError
from ambiseg.methods import gtr, sfm  # noqa: F401  (register the prior/transport used below)

TINY_DDPM = {"name": "cond-ddpm", "steps": 25, "width": 8, "mults": (1, 2), "blocks": 1, "attention": False}


class Oracle(DiffusionTransport):
    """Returns the exact eps that maps a known x0 to the current state; records the steps it is called at."""

    def __init__(self, x0: torch.Tensor, **kw) -> None:
        super().__init__(**kw)
        self.x0, self.calls = x0, []

    def forward(self, x, t, cond):
        self.calls.append(int(t[0]))
        assert bool((t == t[0]).all()) and t.dtype == torch.long
        return self.schedule.predict_eps(x, t, self.x0)


class Affine(DiffusionTransport):
    """eps = w x: a fixed, non-oracle denoiser."""

    def __init__(self, w: float, **kw) -> None:
        super().__init__(**kw)
        self.w = w

    def forward(self, x, t, cond):
        return self.w * x


def test_linear_betas_match_ho_et_al_and_scale_with_steps():
    b = linear_betas(1000)
    assert b.dtype == torch.float64 and b.shape == (1000,)
    assert b[0].item() == pytest.approx(1e-4, abs=1e-15) and b[-1].item() == pytest.approx(0.02, abs=1e-15)
    assert torch.allclose(b.diff(), torch.full((999,), (0.02 - 1e-4) / 999, dtype=torch.float64))
    b100 = linear_betas(100)
    assert b100[0].item() == pytest.approx(1e-3) and b100[-1].item() == pytest.approx(0.2)
    with pytest.raises(ConfigError, match="steps"):
        linear_betas(20)  # 0.02 * 1000 / 20 = 1: abar_T would be 0


def test_schedule_tables_by_hand():
    # T = 4, start/end scaled by 250: betas 0.1, 7/30, 11/30, 0.5
    s = DiffusionSchedule(linear_betas(4, start=0.1 / 250, end=0.5 / 250))
    expected = torch.tensor([1.0, 0.9, 0.69, 0.437, 0.2185], dtype=torch.float64)
    assert torch.allclose(s.alpha_bar, expected, atol=1e-12)
    assert s.posterior_variance(2) == pytest.approx((7 / 30) * (1 - 0.9) / (1 - 0.69))
    x0, x = torch.tensor([[0.5]], dtype=torch.float64), torch.tensor([[2.0]], dtype=torch.float64)
    c0 = (7 / 30) * 0.9**0.5 / (1 - 0.69)
    ck = (1 - 0.9) * (1 - 7 / 30) ** 0.5 / (1 - 0.69)
    assert s.posterior_mean(x0, x, 2).item() == pytest.approx(c0 * 0.5 + ck * 2.0)
    assert torch.allclose(s.posterior_mean(x0, x, 1), x0, atol=1e-15)  # the last step lands on the x0 estimate
    noise = torch.tensor([[-1.0]], dtype=torch.float64)
    xk = s.q_sample(x0, 3, noise)
    assert xk.item() == pytest.approx(0.437**0.5 * 0.5 - (1 - 0.437) ** 0.5)
    assert torch.allclose(s.predict_x0(xk, 3, noise), x0) and torch.allclose(s.predict_eps(xk, 3, x0), noise)


def test_ddim_timesteps():
    assert ddim_timesteps(10, 4) == [10, 7, 4, 1]
    assert ddim_timesteps(10, 10) == list(range(10, 0, -1))
    assert ddim_timesteps(30, 1) == [30]
    with pytest.raises(ConfigError, match="ddim steps"):
        ddim_timesteps(8, 9)


@pytest.mark.parametrize("sampler", [DDPM(), DDPM(variance="large"), DDIM(7), DDIM(7, eta=1.0), DDIM(50)])
def test_oracle_denoiser_recovers_x0_exactly(sampler):
    x0 = torch.rand(3, 1, 4, 4, dtype=torch.float64) * 2 - 1
    field = Oracle(x0, steps=50)
    gen = torch.Generator().manual_seed(0)
    out = sampler(
        field, torch.randn(x0.shape, dtype=torch.float64, generator=gen), None, generator=gen, **field.sampler_options()
    )
    assert torch.allclose(out, x0, atol=1e-10)
    expected = list(range(50, 0, -1)) if isinstance(sampler, DDPM) else ddim_timesteps(50, sampler.steps)
    assert field.calls == expected  # NFE: every step for ddpm, K for ddim, in descending order
    if isinstance(sampler, DDIM):
        assert sampler.nfe == len(field.calls)


def test_truncated_chain_starts_at_the_diffused_estimate_and_runs_k_steps():
    x0 = torch.rand(2, 1, 4, 4, dtype=torch.float64) * 2 - 1
    field = Oracle(x0, steps=50, truncation=12)
    estimate = torch.rand(2, 1, 4, 4, dtype=torch.float64)  # a prior sample in [0, 1]
    state = field.initial_state(estimate, generator=torch.Generator().manual_seed(3))
    eps = torch.randn(estimate.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    a = field.schedule.alpha_bar[12]
    assert torch.allclose(state, a.sqrt() * (2 * estimate - 1) + (1 - a).sqrt() * eps)
    assert field.sampler_options() == {"schedule": field.schedule, "start": 12}
    out = DDPM()(field, state, None, generator=torch.Generator().manual_seed(1), **field.sampler_options())
    assert field.calls == list(range(12, 0, -1)) and torch.allclose(out, x0, atol=1e-10)
    field.calls.clear()
    DDIM(4)(field, state, None, **field.sampler_options())
    assert field.calls == [12, 8, 5, 1]
    with pytest.raises(ConfigError, match="1..12"):
        DDIM(13)(field, state, None, **field.sampler_options())
    steps = field.train_steps(4000, torch.device("cpu"))
    assert steps.min().item() == 1 and steps.max().item() == 12


def test_ddpm_step_by_hand_with_both_variances():
    # T = 2, eps = 0, no clipping: x0_hat = x / sqrt(abar_k), one noisy step then the final mean
    for variance in ("small", "large"):
        field = Affine(0.0, steps=2, beta_start=0.1 / 500, beta_end=0.3 / 500)
        s = field.schedule
        x2 = torch.tensor([[0.3, -0.7]], dtype=torch.float64)
        out = DDPM(variance=variance, clip=False)(
            field, x2, None, generator=torch.Generator().manual_seed(5), **field.sampler_options()
        )
        noise = torch.randn(x2.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
        var = s.posterior_variance(2) if variance == "small" else 0.3
        x1 = s.posterior_mean(x2 / s.alpha_bar[2].sqrt(), x2, 2) + var**0.5 * noise
        assert torch.allclose(out, x1 / s.alpha_bar[1].sqrt())


def test_ddim_eta_zero_is_deterministic_and_eta_one_uses_the_generator():
    field = Affine(0.5, steps=30)
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    a = DDIM(6)(field, x, None, generator=torch.Generator().manual_seed(1), **field.sampler_options())
    b = DDIM(6)(field, x, None, generator=torch.Generator().manual_seed(2), **field.sampler_options())
    assert torch.equal(a, b)
    c = DDIM(6, eta=1.0)(field, x, None, generator=torch.Generator().manual_seed(1), **field.sampler_options())
    d = DDIM(6, eta=1.0)(field, x, None, generator=torch.Generator().manual_seed(1), **field.sampler_options())
    e = DDIM(6, eta=1.0)(field, x, None, generator=torch.Generator().manual_seed(2), **field.sampler_options())
    assert torch.equal(c, d) and not torch.equal(c, e)


def test_clip_keeps_the_x0_estimate_in_range():
    field = Affine(-3.0, steps=30)  # a bad denoiser whose x0 estimate leaves [-1, 1]
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 3
    assert (
        DDIM(1)(field, x, None, **field.sampler_options()).abs().max() <= 1.0
    )  # one step from T to 0 returns the clipped estimate
    assert DDIM(1, clip=False)(field, x, None, **field.sampler_options()).abs().max() > 1.0


def test_sampler_compatibility_errors():
    with pytest.raises(CompatibilityError, match="diffusion"):
        ambiseg.compose(
            prior="noise", transport={"name": "sfm", "width": 8, "mults": (1, 2), "blocks": 1}, sampler="ddpm"
        )
    with pytest.raises(CompatibilityError, match="flow"):
        ambiseg.compose(prior="noise", transport=TINY_DDPM, sampler="euler")
    with pytest.raises(CompatibilityError, match="truncation"):
        ambiseg.compose(prior="gtr", transport=TINY_DDPM, sampler="ddpm")
    with pytest.raises(CompatibilityError, match="noise"):
        ambiseg.compose(prior="noise", transport={**TINY_DDPM, "truncation": 5}, sampler="ddpm")
    with pytest.raises(CompatibilityError, match="schedule"):
        DDIM(2)(lambda x, t, c: x, torch.zeros(1, 1, 2, 2))
    with pytest.raises(ConfigError, match="variance"):
        ambiseg.compose(prior="noise", transport=TINY_DDPM, sampler={"name": "ddpm", "variance": "smal"})


def test_velocity_conversions_are_exact_inverses_along_the_chain():
    schedule = DiffusionSchedule(linear_betas(100))
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 1, 3, 3, dtype=torch.float64, generator=gen) * 2 - 1
    noise = torch.randn(x0.shape, dtype=torch.float64, generator=gen)
    for k in (1, 30, 70, 100):
        xk = schedule.q_sample(x0, k, noise)
        v = schedule.velocity(x0, k, noise)
        torch.testing.assert_close(schedule.eps_from_velocity(xk, k, v), noise)
        torch.testing.assert_close(schedule.x0_from_velocity(xk, k, v), x0)
    a = float(schedule.alpha_bar[30])
    torch.testing.assert_close(schedule.velocity(x0, 30, noise), a**0.5 * noise - (1 - a) ** 0.5 * x0)


@pytest.mark.parametrize("sampler", [DDPM(), DDIM(steps=7)])
def test_a_v_predicting_oracle_recovers_x0_through_the_eps_interface(sampler):
    class VOracle(DiffusionTransport):
        def __init__(self, x0, **kw):
            super().__init__(prediction="v", **kw)
            self.x0 = x0

        def forward(self, x, t, cond):
            eps = self.schedule.predict_eps(x, t, self.x0)
            return self.to_eps(x, t, self.schedule.velocity(self.x0, t, eps))

    x0 = torch.rand(2, 1, 4, 4, dtype=torch.float64) * 2 - 1
    gen = torch.Generator().manual_seed(1)
    field = VOracle(x0, steps=50)
    out = sampler(
        field, torch.randn(x0.shape, dtype=torch.float64, generator=gen), None, generator=gen, **field.sampler_options()
    )
    torch.testing.assert_close(out, x0, atol=1e-8, rtol=0)


def test_unknown_prediction_is_refused():
    with pytest.raises(ConfigError, match="prediction 'x0'.*eps, v"):
        Affine(1.0, steps=10, prediction="x0")
