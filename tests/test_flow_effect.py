"""The flow's own effect: the prior-only twin of a prior + flow method and its paired draws."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ambiseg
from ambiseg import data, evaluation
from ambiseg.errors import CompatibilityError, ConfigError
from ambiseg.flow_effect import check_flow_method, paired_difference, prior_only_twin, sample_with_sources
from ambiseg.method import Method

SIZE = 16


def flow_method(name: str = "atfm", **overrides: object) -> Method:
    """A smoke-sized prior + flow method whose flow moves its states (the ST-Net's output layer
    starts at zero, which would make an untrained flow the identity)."""
    torch.manual_seed(0)
    method = ambiseg.build(name, preset="smoke", in_channels=1, image_size=SIZE, **overrides)
    with torch.no_grad():
        head = method.transport.net.head
        head.weight.normal_(0, 0.3)
    return method.eval()


def images(n: int = 3) -> torch.Tensor:
    return torch.rand(n, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def seeded(n: int | None = None) -> torch.Generator | list[torch.Generator]:
    """One generator, or n per-image generators seeded as `ambiseg eval` seeds them."""
    if n is None:
        return torch.Generator().manual_seed(7)
    return [torch.Generator().manual_seed(7 * 100_003 + i) for i in range(n)]


def test_twin_shares_the_prior_and_rebuilds_as_act_gtr():
    method = flow_method()
    twin = prior_only_twin(method)
    assert twin.prior is method.prior
    assert twin.transport.kind == "map" and twin.stages == ("prior",)
    assert all(p is q for p, q in zip(twin.parameters(), method.prior.parameters(), strict=True))
    assert Method.from_config(twin.config).config == twin.config
    act_gtr = ambiseg.build("act-gtr", preset="smoke", in_channels=1, image_size=SIZE)
    assert {k: v for k, v in twin.config.items() if k != "method"} == {
        k: v for k, v in act_gtr.config.items() if k != "method"
    }
    act_gtr.prior.load_state_dict(method.prior.state_dict())
    x = images()
    assert torch.equal(twin.sample(x, 5, generator=seeded()), act_gtr.sample(x, 5, generator=seeded()))


@pytest.mark.parametrize("name", ["atfm", "atfm-nosf"])
@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("max_batch", [64, 4])
def test_twin_samples_are_the_draws_the_flow_starts_from(name, per_image, max_batch):
    method = flow_method(name)
    x = images()
    n = x.shape[0] if per_image else None
    draws = sample_with_sources(method, x, 6, generator=seeded(n), max_batch=max_batch)
    assert torch.equal(draws.outputs, method.sample(x, 6, generator=seeded(n), max_batch=max_batch))
    twin = prior_only_twin(method).sample(x, 6, generator=seeded(n), max_batch=max_batch)
    assert torch.equal(twin, draws.sources)
    assert draws.sources.shape == draws.outputs.shape == (3, 6, SIZE, SIZE)
    assert (draws.sources - draws.outputs).abs().max() > 0.01  # the flow does move them
    assert 0 <= draws.sources.min() and draws.sources.max() <= 1


def test_twin_keeps_the_prior_temperature():
    method = flow_method(prior={"temperature": 0.5})
    x = images(1)
    draws = sample_with_sources(method, x, 4, generator=seeded())
    state = method.prior.condition(x)
    logits = state.draw(4, generator=seeded())
    expected = torch.lerp(state.mean.unsqueeze(1), logits, 0.5).sigmoid().reshape(1, 4, SIZE, SIZE)
    assert torch.allclose(draws.sources, expected, atol=1e-6)
    assert torch.equal(prior_only_twin(method).sample(x, 4, generator=seeded()), draws.sources)


def test_truncated_path_still_pairs_each_output_with_its_own_draw():
    method = flow_method(transport={"path": {"name": "straight", "truncation": 0.5}})
    x = images(2)
    draws = sample_with_sources(method, x, 6, generator=seeded(), max_batch=4)
    assert torch.equal(draws.outputs, method.sample(x, 6, generator=seeded(), max_batch=4))
    twin = prior_only_twin(method).sample(x, 6, generator=seeded(), max_batch=4)
    # the first chunk (2 samples of each of the 2 images) is drawn before any path noise
    assert torch.equal(twin[:, :2], draws.sources[:, :2])
    assert not torch.equal(twin[:, 2:], draws.sources[:, 2:])


def test_paired_difference_of_identical_sides_is_zero():
    rng = np.random.default_rng(0)
    scores = {"GED16": rng.random(20), "HM-IoU32": rng.random(20), "stray": np.r_[np.nan, rng.random(19)]}
    out = paired_difference(scores, {k: v.copy() for k, v in scores.items()})
    assert list(out) == list(scores)
    for row in out.values():
        assert row["diff"] == row["lo"] == row["hi"] == 0.0
        assert row["first"] == row["second"]
    assert out["GED16"]["n"] == 20 and out["stray"]["n"] == 19
    pooled = paired_difference({"GED16": np.ones((3, 5))}, {"GED16": np.zeros((3, 5))})
    assert pooled["GED16"] == {"diff": 1.0, "lo": 1.0, "hi": 1.0, "first": 1.0, "second": 0.0, "n": 5}


def test_paired_difference_refuses_sides_that_do_not_pair():
    with pytest.raises(ConfigError, match="'Dice' is on one side only"):
        paired_difference({"GED16": [1.0], "Dice": [1.0]}, {"GED16": [1.0]})
    with pytest.raises(ConfigError, match="shapes"):
        paired_difference({"GED16": [1.0, 2.0]}, {"GED16": [1.0]})


@pytest.mark.parametrize(
    ("name", "message"),
    [("act-gtr", "a map \\(IdentityTransport\\), not a flow"), ("sfm-noise", "draws noise states, not masks")],
)
def test_refuses_a_method_without_a_flow_or_a_mask_prior(name, message):
    method = ambiseg.build(name, preset="smoke", in_channels=1, image_size=SIZE)
    for call in (check_flow_method, prior_only_twin, lambda m: sample_with_sources(m, images(1), 2)):
        with pytest.raises(CompatibilityError, match=message) as err:
            call(method)
        assert "\n" not in str(err.value)


def test_a_subset_of_test_images_scores_as_in_the_full_run():
    method = flow_method()
    test = data.build("synthetic", split="test", size=SIZE, sizes=(2, 2, 5))
    cpu = torch.device("cpu")
    full = evaluation.evaluate_method(method, test, counts=(2, 4), seed=1, device=cpu, warmup=False)
    every = evaluation.evaluate_method(method, test, counts=(2, 4), seed=1, device=cpu, warmup=False, indices=[4, 0, 2])
    assert list(every["per_image"]) == list(full["per_image"])
    for key, values in full["per_image"].items():  # NaN where a metric is undefined: equal as NaN
        np.testing.assert_array_equal(every["per_image"][key], np.asarray(values)[[0, 2, 4]])
    with pytest.raises(ConfigError, match="5 is out of range or repeated"):
        evaluation.evaluate_method(method, test, counts=(2,), seed=1, device=cpu, indices=[0, 5])
