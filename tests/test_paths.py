"""Probability paths: exact values of the built-in ones, truncation, and the SFM transport's loss and
sampling following its path (the registry-wide path contract is in test_contract.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange, repeat

import ambiseg
from ambiseg.config import apply_overrides
from ambiseg.errors import CompatibilityError, ConfigError, UnknownNameError
from ambiseg.losses import soft_dice
from ambiseg.methods.noise import NoisePrior
from ambiseg.methods.sfm import SFMTransport
from ambiseg.paths import CosinePath, StraightPath
from ambiseg.registry import paths, samplers

TINY = {"width": 8, "mults": (1, 2), "blocks": 1, "groups": 4, "heads": 1, "head_dim": 8}


def _batch(b=2, a=3, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.rand(b, 1, size, size, generator=g),
        "masks": (torch.rand(b, a, size, size, generator=g) > 0.5).to(torch.uint8),
    }


def _sfm(**options) -> SFMTransport:
    torch.manual_seed(0)
    sfm = SFMTransport(**TINY, **options)
    with torch.no_grad():
        sfm.net.head.weight.normal_(std=0.1, generator=torch.Generator().manual_seed(1))
    return sfm


def test_straight_and_cosine_paths_by_hand():
    x0, x1 = torch.tensor([[2.0, -1.0]]), torch.tensor([[0.0, 1.0]])
    t = torch.tensor([0.25])
    point = StraightPath().sample(x0, x1, t)
    assert torch.equal(point.x_t, torch.tensor([[1.5, -0.5]])) and torch.equal(point.u_t, torch.tensor([[-2.0, 2.0]]))
    point = CosinePath().sample(x0.double(), x1.double(), torch.tensor([1 / 3], dtype=torch.float64))
    s, c = math.sin(math.pi / 6), math.cos(math.pi / 6)  # angle pi t / 2 = pi / 6
    assert torch.allclose(point.x_t, torch.tensor([[2 * c, -c + s]], dtype=torch.float64))
    h = math.pi / 2
    assert torch.allclose(point.u_t, torch.tensor([[-2 * h * s, h * c + h * s]], dtype=torch.float64))
    assert paths.get("ot").factory is StraightPath and paths.get("vp").factory is CosinePath


def test_truncation_maps_times_and_starts_from_the_noised_estimate():
    path = paths.create("cosine", truncation=0.5)
    assert path.truncated and path.span == (0.5, 1.0)
    assert torch.allclose(path.times(torch.tensor([0.0, 0.5, 0.999])), torch.tensor([0.5, 0.75, 0.9995]))
    estimate, noise = torch.full((2, 1, 2, 2), 0.8), torch.full((2, 1, 2, 2), -1.0)
    expected = math.sin(math.pi / 4) * 0.8 - math.cos(math.pi / 4)
    assert torch.allclose(path.start(estimate, noise), torch.full_like(estimate, expected))
    untruncated = StraightPath()
    u = torch.rand(5)
    assert not untruncated.truncated and untruncated.times(u) is u and untruncated.span == (0.0, 1.0)


@pytest.mark.parametrize("bad", [-0.1, 1.0, "abc"])
def test_bad_truncation_is_one_line(bad):
    with pytest.raises(ConfigError) as info:
        paths.create("straight", truncation=bad)
    assert "\n" not in str(info.value) and "truncation" in str(info.value)


def test_sfm_path_option_errors_name_the_closest_path():
    with pytest.raises(UnknownNameError, match="unknown path 'cosin' \\(did you mean 'cosine'\\?\\)"):
        SFMTransport(path="cosin", **TINY)
    with pytest.raises(ConfigError, match="option 'path': expected a path name or a dict with a 'name'"):
        SFMTransport(path={"truncation": 0.2}, **TINY)
    with pytest.raises(ConfigError, match="path 'straight' has no option 't0'"):
        SFMTransport(path={"name": "straight", "t0": 0.2}, **TINY)


def test_default_sfm_loss_is_the_atfm_formula_bit_for_bit():
    """The loss before paths existed, written out: the straight path must reproduce it exactly."""
    sfm, prior, batch = _sfm(alpha=0.5), NoisePrior(), _batch()
    torch.manual_seed(5)
    out = sfm.loss(batch, prior)
    torch.manual_seed(5)
    image, masks = batch["image"], batch["masks"].float()
    x0 = repeat(prior.sample(prior.condition(image), 1).flatten(0, 1), "b c h w -> (b a) c h w", a=3)
    t = repeat(torch.rand(2), "b -> (b a)", a=3)
    x1 = rearrange(masks, "b a h w -> (b a) 1 h w")
    tt = rearrange(t, "n -> n 1 1 1")
    xt = tt * x1 + (1 - tt) * x0
    v = sfm(xt, t, repeat(image, "b c h w -> (b a) c h w", a=3))
    fm = F.mse_loss(v, x1 - x0)
    sf = (1 - soft_dice(xt + v * (1 - tt), x1)).mean()
    assert torch.equal(out["fm"], fm) and torch.equal(out["sf"], sf) and torch.equal(out["loss"], fm + 0.5 * sf)


def test_sfm_loss_follows_the_cosine_path():
    sfm, prior, batch = _sfm(path="cosine"), NoisePrior(), _batch(a=2)
    torch.manual_seed(2)
    out = sfm.loss(batch, prior)
    torch.manual_seed(2)
    image = batch["image"]
    x0 = repeat(prior.sample(prior.condition(image), 1).flatten(0, 1), "b c h w -> (b a) c h w", a=2)
    t = repeat(torch.rand(2), "b -> (b a)", a=2)
    x1 = rearrange(batch["masks"].float(), "b a h w -> (b a) 1 h w")
    angle = rearrange(t, "n -> n 1 1 1") * math.pi / 2
    xt = angle.sin() * x1 + angle.cos() * x0
    v = sfm(xt, t, repeat(image, "b c h w -> (b a) c h w", a=2))
    torch.testing.assert_close(out["fm"], F.mse_loss(v, math.pi / 2 * (angle.cos() * x1 - angle.sin() * x0)))
    x1_hat = (angle.cos() * v + math.pi / 2 * angle.sin() * xt) / (math.pi / 2)
    torch.testing.assert_close(out["sf"], (1 - soft_dice(x1_hat, x1)).mean())


class Refusing(NoisePrior):
    """A prior that must not be sampled (a truncated flow trains from noise)."""

    def sample(self, state, num_samples, *, generator=None):
        raise AssertionError("the prior was sampled")


def test_truncated_sfm_trains_on_t_in_its_span_from_noise():
    sfm, seen = _sfm(path={"name": "straight", "truncation": 0.6}), []
    sfm.net.register_forward_hook(lambda m, inputs, out: seen.append(inputs[1].clone()))
    out = sfm.loss(_batch(b=64, a=1, size=8), Refusing())
    assert torch.isfinite(out["loss"]) and seen[0].min() >= 0.6 and seen[0].max() < 1.0 and seen[0].std() > 0.05


def test_truncated_sampling_starts_at_t0_from_the_noised_prior_sample():
    method = ambiseg.build("atfm", preset="smoke", transport={"path": {"name": "straight", "truncation": 0.4}})
    times = []
    method.transport.net.register_forward_hook(lambda m, inputs, out: times.append(round(float(inputs[1][0]), 6)))
    method.sample(torch.rand(1, 1, 16, 16), 2)
    assert times == [0.4, 0.52, 0.64, 0.76, 0.88]  # Euler, 5 steps over [0.4, 1]
    estimate = torch.rand(3, 1, 4, 4)
    start = method.transport.initial_state(estimate, generator=torch.Generator().manual_seed(7))
    noise = torch.randn(estimate.shape, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(start, 0.4 * estimate + 0.6 * noise)
    plain = ambiseg.build("atfm", preset="smoke")
    assert plain.transport.initial_state(estimate) is estimate
    assert plain.transport.sampler_options() == {"t0": 0.0, "t1": 1.0}


def test_the_exact_field_of_a_truncated_path_reaches_the_mask():
    path = paths.create("cosine", truncation=0.3)
    g = torch.Generator().manual_seed(0)
    noise, mask = torch.randn(4, 1, 3, 3, generator=g, dtype=torch.float64), torch.rand(4, 1, 3, 3, generator=g)
    mask = mask.double()

    def field(x, t, cond):  # the conditional velocity of the pair (noise, mask)
        return path.sample(noise, mask, t).u_t

    t0, t1 = path.span
    out = samplers.create("rk4", steps=20)(field, path.start(mask, noise), None, t0=t0, t1=t1)
    torch.testing.assert_close(out, mask, atol=1e-7, rtol=0)


def test_flow_sampler_span_comes_from_the_transport_unless_set_on_the_sampler():
    def one(x, t, cond):
        return torch.ones_like(x)

    x = torch.zeros(2, 1)
    assert torch.allclose(samplers.create("euler", steps=3)(one, x), torch.full_like(x, 1.0))
    assert torch.allclose(samplers.create("euler", steps=3)(one, x, t0=0.5, t1=1.0), torch.full_like(x, 0.5))
    assert torch.allclose(samplers.create("heun", steps=3, t0=0.25)(one, x, t0=0.5), torch.full_like(x, 0.75))
    with pytest.raises(ConfigError, match="need t0 < t1, got t0=1.0, t1=1.0"):
        samplers.create("euler")(one, x, t0=1.0)
    with pytest.raises(CompatibilityError, match="does not read the transport's option\\(s\\) schedule"):
        samplers.create("euler")(one, x, schedule=None)
    with pytest.raises(CompatibilityError, match="Direct does not read"):
        samplers.create("direct")(one, x, t0=0.0)


def test_path_option_round_trips_through_the_config():
    method = ambiseg.build("sfm", preset="smoke", transport={"path": "vp"})
    assert isinstance(method.transport.path, CosinePath) and method.config["transport"]["path"] == "vp"
    assert ambiseg.build("atfm", preset="smoke").config["transport"]["path"] == "straight"
    truncated = {"transport.path": {"name": "cosine", "truncation": 0.25}}
    again = ambiseg.Method.from_config(apply_overrides(ambiseg.build("atfm", preset="smoke").config, truncated))
    assert isinstance(again.transport.path, CosinePath) and again.transport.path.truncation == 0.25
    assert again.config["transport"]["path"] == {"name": "cosine", "truncation": 0.25}
    # a truncated path starts from the prior's sample as a mask estimate: a noise prior is refused
    with pytest.raises(ambiseg.CompatibilityError, match="carries mask states, but prior NoisePrior draws noise"):
        ambiseg.Method.from_config(apply_overrides(method.config, truncated))
    assert {"straight", "cosine"} <= set(ambiseg.list_components()["paths"])


def test_a_plugin_path_reaches_the_sfm_transport(tmp_path, monkeypatch, write_plugin):
    """A path registered by an installed distribution's entry point is listed and trains SFM."""
    import importlib
    import sys

    from ambiseg.registry import load_plugins

    write_plugin(
        tmp_path,
        "ambiseg_demo_path",
        """
        from ambiseg.paths import AffinePath
        from ambiseg.registry import paths

        @paths.register("demo-quadratic")
        class Quadratic(AffinePath):
            def coefficients(self, t):
                return t * t, 1 - t * t, 2 * t, -2 * t
        """,
        entry="demo-path",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    try:
        assert "demo-path" in load_plugins(force=True)
        assert "demo-quadratic" in ambiseg.list_components()["paths"]
        sfm, batch, prior = _sfm(path="demo-quadratic"), _batch(a=1), NoisePrior()
        torch.manual_seed(0)
        out = sfm.loss(batch, prior)
        torch.manual_seed(0)
        x0 = prior.sample(prior.condition(batch["image"]), 1).flatten(0, 1)
        t = torch.rand(2)
        x1, tt = batch["masks"].float(), t.view(-1, 1, 1, 1)
        v = sfm(tt * tt * x1 + (1 - tt * tt) * x0, t, batch["image"])
        torch.testing.assert_close(out["fm"], F.mse_loss(v, 2 * tt * (x1 - x0)))
    finally:
        paths._entries.pop("demo-quadratic", None)
        sys.modules.pop("ambiseg_demo_path", None)
