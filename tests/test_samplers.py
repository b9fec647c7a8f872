"""Flow samplers against ODEs with known solutions, and their order of accuracy."""

from __future__ import annotations

import math

import pytest
import torch

from ambiseg.errors import ConfigError
from ambiseg.registry import samplers

A = -1.3  # dx/dt = A x  ->  x(1) = x0 exp(A)


def linear(x, t, cond):
    return A * x


def error(name: str, steps: int) -> float:
    x0 = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64)
    x1 = samplers.create(name, steps=steps)(linear, x0)
    return (x1 - x0 * math.exp(A)).abs().max().item()


@pytest.mark.parametrize("name, order", [("euler", 1), ("midpoint", 2), ("heun", 2), ("rk4", 4)])
def test_order_of_accuracy(name, order):
    errs = [error(name, n) for n in (8, 16, 32)]
    rates = [math.log2(errs[i] / errs[i + 1]) for i in range(2)]
    assert all(abs(r - order) < 0.25 for r in rates), (name, errs, rates)
    assert samplers.get(name).info["order"] == order


@pytest.mark.parametrize("name", ["euler", "midpoint", "heun", "rk4"])
def test_field_evaluations_and_time_grid(name):
    seen = []

    def field(x, t, cond):
        seen.append(t.clone())
        assert t.shape == (x.shape[0],) and cond == "c"
        return torch.ones_like(x)

    sampler = samplers.create(name, steps=5)
    x1 = sampler(field, torch.zeros(4, 1, 2, 2), "c")
    assert torch.allclose(x1, torch.ones_like(x1))  # dx/dt = 1 from 0 to 1 is exact for all
    assert len(seen) == sampler.nfe
    assert min(float(t[0]) for t in seen) == 0.0 and max(float(t[0]) for t in seen) <= 1.0


def test_euler_is_exact_on_its_grid():
    # dx/dt = t: Euler with N steps gives sum_{k<N} k/N * 1/N = (N-1)/(2N).
    x1 = samplers.create("euler", steps=4)(lambda x, t, c: t.view(-1, 1).expand_as(x), torch.zeros(2, 1))
    assert torch.allclose(x1, torch.full_like(x1, 3 / 8))


def test_dopri5_reaches_the_exact_endpoint():
    x0 = torch.tensor([1.0, 3.0], dtype=torch.float64)
    x1 = samplers.create("dopri5", rtol=1e-8, atol=1e-8)(linear, x0)
    assert torch.allclose(x1, x0 * math.exp(A), atol=1e-6)


def test_direct_calls_the_map_once():
    calls = []
    out = samplers.create("direct")(lambda x, t, c: calls.append(t) or x * 2, torch.ones(3))
    assert torch.equal(out, torch.full((3,), 2.0)) and calls == [None]


@pytest.mark.parametrize("bad", [0, -3])
def test_steps_must_be_positive(bad):
    with pytest.raises(ConfigError, match="steps must be >= 1"):
        samplers.create("euler", steps=bad)


def test_dopri5_tolerances_must_be_positive():
    with pytest.raises(ConfigError, match="rtol > 0"):
        samplers.create("dopri5", rtol=0)
